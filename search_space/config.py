"""The ``train:`` and ``search:`` sections of a spec.

They are plain dataclasses validated by :mod:`search_space.schema`; any ``train`` value may be a choice (for
example ``lr``), so a search can tune the recipe with the architecture. ``search`` values are always fixed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from .schema import field

DATASETS = ("digits", "cifar10", "cifar100", "imagefolder", "synthetic")


@dataclass
class TrainConfig:
    dataset: Literal["digits", "cifar10", "cifar100", "imagefolder", "synthetic"] = field(
        "digits", doc="digits ships with scikit-learn (no download); cifar10/cifar100/imagefolder read data_dir")
    data_dir: Optional[str] = field(None, doc="directory of cifar10/cifar100 python batches or of class folders")
    image_size: Optional[int] = field(None, min=1, doc="train at this size; null: the model's input_size")
    val_fraction: float = field(0.15, min=0.01, max=0.9, doc="share of the training data held out for validation")
    test_fraction: float = field(0.2, min=0.01, max=0.9,
                                 doc="share held out as test split where the dataset has none (digits, imagefolder)")
    train_fraction: float = field(1.0, min=0.01, max=1.0, doc="fidelity: share of the training rows used")
    epochs: int = field(8, min=1, doc="training epochs")
    time_budget: Optional[float] = field(None, min=0.0, doc="stop training after this many seconds")
    batch_size: int = field(128, min=1, doc="images per step")
    optimizer: Literal["sgd", "adamw"] = field("sgd", doc="sgd is Nesterov SGD")
    lr: float = field(0.1, min=0.0, doc="peak learning rate")
    momentum: float = field(0.9, min=0.0, max=1.0, doc="SGD momentum")
    weight_decay: float = field(5e-4, min=0.0, doc="weight decay (not applied to BN and biases)")
    label_smoothing: float = field(0.1, min=0.0, max=1.0, doc="label smoothing of the cross-entropy")
    schedule: Literal["cosine", "onecycle", "constant"] = field("cosine", doc="decay after warmup")
    warmup_epochs: float = field(1.0, min=0.0, doc="linear warmup length in epochs")
    crop_padding: Optional[int] = field(None, min=0, doc="random-crop padding in pixels; null: size/8")
    flip: Optional[bool] = field(None, doc="random horizontal flips; null: on for cifar/imagefolder, off for digits")
    amp: Literal["auto", "bf16", "fp16", "off"] = field("auto", doc="autocast; auto: bf16 on CUDA, off elsewhere")
    channels_last: Optional[bool] = field(None, doc="channels_last memory format; null: on for CUDA")
    compile: bool = field(False, doc="wrap the model in torch.compile")
    device: Literal["auto", "cuda", "mps", "cpu"] = field("auto", doc="auto picks cuda, then mps, then cpu")
    seed: int = field(0, doc="seed for data split, init and augmentation")
    synthetic_samples: int = field(512, min=2, doc="synthetic dataset: number of images")
    synthetic_classes: int = field(10, min=2, doc="synthetic dataset: number of classes")
    synthetic_channels: int = field(3, min=1, doc="synthetic dataset: image channels")


@dataclass
class SearchConfig:
    trials: int = field(24, min=1, doc="trials in the study (completed, pruned and failed ones count)")
    timeout: Optional[float] = field(None, min=0.0, doc="stop starting new trials after this many seconds")
    sampler: Literal["tpe", "random", "gp", "nsga2"] = field("tpe", doc="Optuna sampler")
    pruner: Literal["hyperband", "median", "successive_halving", "none"] = field("hyperband", doc="Optuna pruner")
    objectives: list[Literal["val_accuracy", "params", "macs", "latency"]] = field(
        default_factory=lambda: ["val_accuracy"], doc="maximise val_accuracy, minimise the others")
    max_params: Optional[float] = field(None, min=0.0, doc="budget: reject samples with more parameters")
    max_macs: Optional[float] = field(None, min=0.0, doc="budget: reject samples with more MACs at input_size")
    storage: Optional[str] = field(None, doc="Optuna storage URL; null: sqlite file in the run directory")
    study_name: Optional[str] = field(None, doc="Optuna study name; null: the spec's name")
    seed: int = field(0, doc="sampler seed")
    warm_start: list[str] = field(default_factory=list, doc="architecture YAML files (relative to the spec) to try first")
