"""The headline answers of one dataset in words, from the summary tables."""

from saliency_robustness.findings import findings, findings_page
from saliency_robustness.logs import log_to_file
from saliency_robustness.tables import atomic_path, read_parquet, write_parquet

log_to_file(snakemake.log[0])
table = findings(
    read_parquet(snakemake.input.detection),
    read_parquet(snakemake.input.method_comparison),
    read_parquet(snakemake.input.saliency_change),
    read_parquet(snakemake.input.severity_trends),
    read_parquet(snakemake.input.variance_decomposition),
    list(snakemake.params.methods),
    snakemake.params.confidence,
)
write_parquet(table, snakemake.output.table)
with atomic_path(snakemake.output.csv) as path:
    table.to_csv(path, index=False)
with atomic_path(snakemake.output.page) as path:
    path.write_text(findings_page(table, snakemake.params.confidence), encoding="utf-8")
