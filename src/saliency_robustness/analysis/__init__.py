"""Analysis of saliency maps and predictions: how they change and what that tells.

``map_similarity`` (normalisation and the similarity of two maps: RMSE, SSIM, Spearman,
top-k IoU), ``saliency_change`` (clean vs perturbed maps and predictions, summaries,
trends, variance decomposition), ``detection`` (does a saliency score flag a wrong
prediction), ``agreement`` (between models), ``faithfulness`` and ``sanity`` (need the
model: torch) with their light ``*_summary`` tables, ``localisation`` (against lesion
masks), ``robustness`` (MedMNIST-C scores), ``classification_summary`` and ``statistics``
(the hierarchical bootstrap behind every interval and test). Only ``faithfulness`` and
``sanity`` import torch."""
