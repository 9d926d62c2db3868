# The one rule of every figure drawn from summary tables, as a template: its rules exist only
# where workflow/rules/plots.smk uses it (use rule plot_table from plot_template as
# plot_<figure> with:), each giving input, output, log, benchmark and params (figure, a key
# of plots.FIGURES; dpi). A module, not a rule of the workflow: a base rule there would be a
# rule of its own, whose generic output would match every figure (ambiguous rules).
rule plot_table:
    conda:
        "../../envs/plots.yaml"
    script:
        "../scripts/plot.py"
