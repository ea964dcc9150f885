"""Physics-informed conditional GAN for contrast transfer (maps in the middle): one spin-echo image
plus its (TE, TR) -> PD, T1, T2 -> any target (TE, TR); a multi-class PatchGAN discriminator.

Run: python -m qmri_jax.main --config=configs/gan.py --workdir=/tmp/qmri_gan

Data: synthetic brains (MNI152 anatomy, 3 T tissue values, 25% with lesions/tumours), the paper's
five spin-echo contrasts (``pelvis_se5``: TE/TR 75/4500, 120/4500, 8/400, 8/750, 8/4500 ms),
Rician noise (SNR 50), 4 mm slices (48 x 56), not normalised (each image is divided by its own
99th percentile inside the networks). Each training example: one input contrast of one slice and
one target contrast, drawn per step.

Presets:
  ""        CPU default: U-Net 16/32/64 generator, PatchGAN 32/64/128, 3000 steps of batch 8;
            on top of the paper's losses, the supervision synthetic slices allow: the target
            image of the same slice (paired) and the true maps; adversarial weight 0.01;
  unpaired  the paper's losses only (MAE reconstruction of the input through the maps +
            adversarial), same size and steps: what unpaired data without maps give;
  paper     the published setting for a GPU: 2 mm slices, U-Net 64..512, PatchGAN 128..512 with
            a 190 x 190 receptive field, Nadam 5e-4, batch 16, 500 epochs, pre-training stages,
            shifts up to 10 pixels, unpaired.
"""

from configs import default


def get_config(preset: str = ""):
    config = default.get_config()
    config.mode = "train"
    config.task = "gan"
    config.targets = ("PD", "T1", "T2")
    config.target_scale = (1.0, 1000.0, 100.0)

    config.data.protocol = "pelvis_se5"
    config.data.resolution_mm = 4
    config.data.num_subjects = 40
    config.data.slices_per_subject = 10
    config.data.pathology_fraction = 0.25
    config.data.snr = 50.0
    config.data.normalisation = "none"

    config.model.name = "unet"
    config.model.features = (16, 32, 64)
    config.model.norm = "batch"
    config.model.up = "bilinear"  # transposed convolutions left a 2-pixel checkerboard in the maps

    # The other keys: configs/default.py. adv_weight 0.01 (0.05 in :unpaired and :paper): with the
    # paired and map terms, 0.05 gave T1 11.7% against 9.9% (docs/results.md).
    config.gan.update(paired_weight=1.0, maps_weight=1.0, adv_weight=0.01,
                      gen_pretrain_steps=100, disc_pretrain_steps=50, shift_px=2)

    config.train.optimizer = "nadam"
    config.train.learning_rate = 5e-4
    config.train.schedule = "constant"
    config.train.warmup_steps = 0
    config.train.grad_clip = 1.0
    config.train.batch_size = 8
    config.train.num_steps = 3000
    config.train.eval_every = 250
    config.train.checkpoint_every = 250
    config.train.log_every = 50

    if preset == "unpaired":
        config.gan.update(paired_weight=0.0, maps_weight=0.0, adv_weight=0.05)
    elif preset == "paper":
        config.data.resolution_mm = 2
        config.data.num_subjects = 97
        config.data.slices_per_subject = 40
        config.model.features = (64, 128, 256, 512)
        config.gan.disc_features = (128, 256, 512, 512, 512)
        config.gan.disc_extra_convs = 2  # receptive field 191 pixels
        config.gan.update(paired_weight=0.0, maps_weight=0.0, adv_weight=0.05, shift_px=10)
        config.gan.gen_pretrain_steps = 2000
        config.gan.disc_pretrain_steps = 1000
        config.train.batch_size = 16
        config.train.num_steps = 500 * 3104 // 16  # 500 epochs of the 3104 training slices
        config.train.eval_every = 2000
        config.train.checkpoint_every = 2000
    elif preset:
        raise ValueError(f"configs/gan.py: unknown preset {preset!r} (available: unpaired, paper)")
    return config
