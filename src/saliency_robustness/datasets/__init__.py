"""Datasets: where images and labels come from, as one npz contract.

``info`` (a dataset's task, labels, channels and sizes: MedMNIST's table or a
``data.custom`` entry; light), ``medmnist`` (download with MD5 verification from the
official host or a mirror), ``medmnist_info`` (MedMNIST's table as plain data), ``npz``
(reading dataset and perturbed files), ``folds`` (stratified k folds over train + val),
``custom`` (your own image folder + CSV), ``synthetic`` (images with known lesions) and
``labels`` (uncertain multi-label entries)."""
