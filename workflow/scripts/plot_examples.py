"""Figure: example images at each severity with every method's saliency map."""

from saliency_robustness.datasets.npz import load_npz, load_perturbed
from saliency_robustness.logs import log_to_file
from saliency_robustness.plots import saliency_examples_figure
from saliency_robustness.tables import maps_from_table, read_saliency

log_to_file(snakemake.log[0])
maps = {}
saliency = read_saliency(snakemake.input.saliency, fold=snakemake.params.fold)
for method, table in saliency.groupby("method", sort=False):
    maps[method] = {
        # Multi-label tables hold k rows per image, highest-scoring target first: show that one.
        (name, int(severity)): maps_from_table(
            group.drop_duplicates("image_index").sort_values("image_index")
        )
        for (name, severity), group in table.groupby(["perturbation", "severity"])
    }
n_attributed = len(next(iter(next(iter(maps.values())).values())))
saliency_examples_figure(
    load_npz(snakemake.input.data)["test_images"],
    load_perturbed(snakemake.input.perturbed),
    maps,
    image_indices=list(range(min(snakemake.params.n_images, n_attributed))),
    path=snakemake.output[0],
    dpi=snakemake.params.dpi,
)
