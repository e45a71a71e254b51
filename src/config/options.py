"""The vocabularies of the config: the allowed values of each choice key, the dataset shapes and
zoo defaults, the seed range, the rewind epochs that training keeps, and ``SEARCHABLE`` (the
parameters a search may vary and where they live in the config)."""

# Byte-level text corpora (src.text_data): windows of data.context bytes, next-byte targets.
TEXT_DATASETS = ("python-stdlib",)
DATASETS = ("mnist", "fashion-mnist", "cifar10", "mnist-5k") + TEXT_DATASETS
TEXT_CONTEXT = 128  # data.context's default: bytes per window
BYTES = 256  # a text dataset's classes and the decoder's vocabulary: one token per byte value
# SHA-256 of each text dataset's committed snapshot under data/ (checked on load; part of the data identity).
CORPUS_SHA256 = {"python-stdlib": "e440f0fce63b56cd3aa57760e08a76e1b6a22beac4ff831cee1de3d478dcc3d3"}
MODEL_TYPES = ("mlp", "cnn")
# Pre-norm residual models with removable blocks (src.residual_models); the decoder reads text.
RESIDUAL_TYPES = ("resmlp", "vit", "decoder")
# Architectures pruned physically through Torch-Pruning (src.models' zoo).
ZOO_TYPES = ("resnet", "vgg", "lenet5") + RESIDUAL_TYPES
ZOO_DEFAULTS = {"resnet": (20, 16), "vgg": (16, 64), "lenet5": (None, None),  # (depth, width)
                "resmlp": (12, 64), "vit": (12, 64), "decoder": (8, 128)}
# The other size keys of the residual models and their defaults (the decoder's context: data.context).
RESIDUAL_DEFAULTS = {"resmlp": {"mlp_ratio": 1},
                     "vit": {"heads": 4, "patch_size": 7, "mlp_ratio": 2},
                     "decoder": {"heads": 4, "mlp_ratio": 4}}
VGG_DEPTHS = (11, 13, 16, 19)
# Image shape (C, H, W) of each dataset: the zoo models' default input_shape.
DATASET_SHAPES = {"mnist": (1, 28, 28), "fashion-mnist": (1, 28, 28), "cifar10": (3, 32, 32), "mnist-5k": (1, 28, 28)}
STRATEGIES = ("one_shot", "iterative", "depth")
# prune.strategy "depth" removes whole residual blocks (src.config.depth, cka_prune.depth): the
# models with removable blocks (a resnet's of stride 1 and equal channels), and the library's criteria and compensations by name.
DEPTH_STRATEGY = "depth"
DEPTH_TYPES = ("resnet",) + RESIDUAL_TYPES
DEPTH_CRITERIA = ("cka", "cosine", "angular", "tail", "loss", "pons", "random", "residual", "cka-refit")
DEPTH_COMPENSATIONS = ("none", "lstsq")
CRITERIA = ("cka", "l1", "l2", "random")
# Baselines scored from the layer's post-ReLU outputs (taylor: and their gradients).
ACTIVATION_CRITERIA = ("apoz", "mean_activation", "taylor")
GREEDY_VARIANTS = ("conditional", "independent")
# "refit": the consumer's pre-activation as a least-squares refit of the kept units recovers it
# (src.pruning.criteria); "next" and "logits" as the paper's extensions.
TARGETS = ("layer", "next", "refit", "logits")
# Structured Optimal Brain Surgeon (Hassibi & Stork 1993, as Frantar & Alistarh 2022 prune structures):
# the unit whose removal the optimal refit of its consumer repairs best goes first.
REFIT_CRITERIA = ("obs",)
# prune.params.compensate: what the consumer of a pruned layer does about the removed units after
# a pass (src.pruning.compensate): nothing (the paper), absorb their mean in its bias, or refit.
COMPENSATIONS = ("none", "bias", "lstsq")
ALLOCATIONS = ("uniform", "global")
# Torch-Pruning's own importances, for the zoo models (cka_prune.tp).
TP_CRITERIA = ("tp_l1", "tp_bn", "tp_taylor", "tp_random")
ENGINES = ("fast", "reference")
KERNELS = ("linear", "rbf")
HOOKS = ("module", "nonlinearity")
WANDB_MODES = ("disabled", "offline", "online")
SEARCH_METHODS = ("grid", "random", "bayes")
SEARCH_METRICS = ("val_loss", "val_acc")
OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("constant", "step", "cosine")
# prune.params.retrain: fine-tune the pruned weights, or rewind them first (Frankle et al. 2020).
RETRAIN_MODES = ("finetune", "rewind")
# Training keeps the weights of epochs 0 (the initialisation) to REWIND_EPOCHS next to the
# model, whatever any prune config says, so that every rewind point is there when a prune
# config asks for it; the early epochs are where Frankle et al. (2020) rewind to.
REWIND_EPOCHS = 5
# Seeds go to numpy and torch.manual_seed, which take unsigned 32-bit and 64-bit values; the
# common range is the one rule for the config's seeds and --seed.
SEED_MAX = 2**32 - 1
# W&B sweep distributions that both backends can search (Optuna: categorical, int, float, log float).
SEARCH_DISTRIBUTIONS = ("constant", "categorical", "int_uniform", "uniform", "q_uniform",
                        "log_uniform", "log_uniform_values")
# Search parameters and where they live in the config.
SEARCHABLE = {
    "lr": ("params", "lr"),
    "batch_size": ("params", "batch_size"),
    "epochs": ("params", "epochs"),
    "patience": ("params", "patience"),
    "dropout_rate": ("model", "dropout_rate"),
}
