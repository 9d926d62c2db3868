import sys
from pathlib import Path

from snakemake.utils import min_version, validate

min_version("9.0")

# Every script imports the library from src/. Snakemake passes the main process's sys.path
# on to scripts (also inside conda envs), so this one line serves all rules.
sys.path.insert(0, str(Path(workflow.basedir) / "src"))


configfile: "config/config.yaml"


# One short line per problem (an unknown key names the nearest valid one); Snakemake's
# validate then fills in the schema's defaults.
from saliency_robustness.config_schema import load_schema, schema_errors

_schema = Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.yaml"
_schema_errors = schema_errors(config, load_schema(_schema))
if _schema_errors:
    raise ValueError("Invalid config:\n  " + "\n  ".join(_schema_errors))
validate(config, "workflow/schemas/config.schema.yaml")


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/perturb.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/attribute.smk"
include: "workflow/rules/metrics.smk"
include: "workflow/rules/analysis.smk"
include: "workflow/rules/localisation.smk"
include: "workflow/rules/plots.smk"


rule all:
    default_target: True
    input:
        all_outputs(),
