"""Any figure of summary tables: ``params.figure`` names it in plots.FIGURES; several input
tables (one per model and method, say) are concatenated first."""

from saliency_robustness.logs import log_to_file
from saliency_robustness.plots import table_figure
from saliency_robustness.tables import read_parquet

log_to_file(snakemake.log[0])
draw = table_figure(snakemake.params.figure)
draw(read_parquet(list(snakemake.input)), snakemake.output[0], dpi=snakemake.params.dpi)
