"""The best small CNN on Fashion-MNIST: max pooling, augmentation, dropout, label smoothing, a parameter EMA,
cosine decay and a test-time flip.

    harness train --config fashion_mnist_best --workdir runs/fashion_mnist_best

Measured on this project's 2-core AMD EPYC (Zen 5) CPU, jax 0.10.2, real Fashion-MNIST, full 10 000-image test split,
seeds 0, 1, 2 (`--config.seed=N`): test accuracy 0.9363, 0.9372, 0.9388 — **median 0.9372** — after 30 epochs
(~13 min of training each alone: 779 s and 782 s for seeds 1 and 2; seed 0 took 1 386 s sharing the CPU), 824k
parameters. `harness bench accuracy --config fashion_mnist_best --workdirs W0 W1 W2` records such runs in the ledger.
Those runs kept the EMA at a constant 0.999 from the initial weights; its decay now warms up (min(0.999,
(1+t)/(10+t)), see steps.ema_decay), which after 30 epochs changes only weights that weigh 0.999^5 080 < 1 % of the
average: not re-measured. Short runs gain: `--config.num_epochs=2` gave 0.8860 (raw weights 0.8859; 0.8317 before).
Published small-CNN anchors (zalandoresearch/fashion-mnist): 2 Conv + pooling + BatchNorm 0.934, 2 Conv + 3 FC with
augmentation and BatchNorm 0.934. Without max pooling and the test-time flip (avg pooling, plain evaluation): 0.9353
for seed 0.
"""

from harness.config import base_config


def get_config():
    c = base_config()
    c.dataset = "fashion_mnist"
    c.model = "cnn"  # 32/64 channels, 256 dense units: 824k parameters
    c.cnn_pool = "max"
    c.num_epochs = 30
    c.batch_size = 128
    c.optimizer = "adam"
    c.learning_rate = 2e-3
    c.schedule = "warmup_cosine"
    c.warmup_fraction = 0.05
    c.augment_translate = 2
    c.augment_flip = "auto"  # mirrors clothes; never digits or characters
    c.dropout = 0.25
    c.label_smoothing = 0.1
    c.ema_decay = 0.999
    c.eval_flip = True  # test-time flip: the mean of the logits of each test image and its mirror
    return c
