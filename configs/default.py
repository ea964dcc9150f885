"""Defaults for every qmri_jax job; experiment configs import this and override.

Run: python -m qmri_jax.main --config=configs/fit.py --workdir=/tmp/qmri_fit
"""

import ml_collections


def get_config():
    config = ml_collections.ConfigDict()
    config.mode = "fit"
    config.seed = 0

    config.phantom = ml_collections.ConfigDict()
    config.phantom.size = 128
    config.phantom.inversion_efficiency = 0.95

    config.acquisition = ml_collections.ConfigDict()
    config.acquisition.protocol = "nist_vir"
    config.acquisition.snr = 50.0  # PD / sigma

    config.fit = ml_collections.ConfigDict()
    config.fit.model = "ir"
    config.fit.loss = "rician"
    config.fit.max_iter = 30
    config.fit.sigma_known = False  # False: estimate sigma from the background like on real data

    # ---- learned mapping (modes train / eval / predict) ----
    config.data = ml_collections.ConfigDict()
    config.data.protocol = "four_contrast_brain"
    config.data.field = "3T"
    config.data.resolution_mm = 2
    config.data.num_subjects = 20
    config.data.slices_per_subject = 16
    config.data.geometric_fraction = 0.0
    config.data.pathology_fraction = 0.25
    # The splits whose subjects may have pathology (() = all; ("test",): train on healthy brains,
    # test on patients) and the kinds drawn, alternating by subject: "tumour", "ms".
    config.data.pathology_splits = ()
    config.data.pathology_kinds = ("tumour", "ms")
    config.data.snr = float("inf")  # noise-free, as in the thesis; e.g. 30.0 for noisy data
    config.data.receive_bias = 0.0
    config.data.transmit_bias = 0.0
    # Per-subject factor on the inversion efficiency k, uniform in [1 - s, 1 + s], not clipped at 1:
    # real IR-FSE data fit with k > 1 for short T1 (the NIST phantom: 1.03-1.10 below 350 ms).
    config.data.k_spread = 0.0
    # Radii of the geometric subjects' ellipsoids as fractions of the slice size (low, high); a
    # smaller low end gives objects as small as the NIST phantom's spheres (~4 voxels at 4 mm).
    config.data.geometric_radius = (0.08, 0.3)
    config.data.slice_thickness_vox = 1
    config.data.normalisation = "none"
    config.data.seed = 0
    # k-fold cross-validation (sweeps: qmri_jax.sweeps.folds): 0 = the fixed 80/10/10 split; k >= 2:
    # the test split is fold cv_fold of the subjects, validation 10% of the others.
    config.data.cv_folds = 0
    config.data.cv_fold = 0
    # The protocol's images the network sees, by name, e.g. ("T1w", "T2w"); () = all. The
    # workdir's protocol.json (read by --mode=predict) is then that subset.
    config.data.inputs = ()
    config.data.data_dir = ""  # "" = ~/.cache/qmri_jax/tfds (shared between workdirs)
    config.data.on_the_fly = False  # True: fresh training subjects every epoch
    # 2: axial slices; 3: whole volumes (the regression task trains on random 3D crops,
    # train.crop = (X, Y, Z), and evaluates on the 2D split's test slices, so 2D and 3D compare).
    config.data.dims = 2

    config.targets = ("T1", "T2", "PD")
    config.target_scale = (1000.0, 100.0, 1.0)  # typical values (units of each target)

    config.model = ml_collections.ConfigDict()
    config.model.name = "unet"
    config.model.features = (16, 32, 64, 128)
    config.model.norm = "batch"
    config.model.dropout = 0.0

    config.train = ml_collections.ConfigDict()
    config.train.batch_size = 8
    config.train.num_steps = 600
    config.train.optimizer = "adam"
    config.train.learning_rate = 2e-3
    config.train.weight_decay = 1e-4
    config.train.schedule = "cosine"  # constant | exponential | cosine
    config.train.warmup_steps = 20
    config.train.decay_after = 0
    config.train.decay_steps = 1000
    config.train.decay_rate = 0.5
    config.train.grad_clip = 1.0
    config.train.ema_decay = 0.0
    # Regression-task augmentation: a random (height, width) window per training example (() =
    # whole slices; each a multiple of the network's 2**(levels-1)) and left-right flips.
    config.train.crop = ()
    config.train.flip = False
    # (low, high): each training example's images times a gain log-uniform in it, its PD target
    # with them (the regression task; () = off): T1 then cannot be read from absolute intensity.
    config.train.intensity_scale = ()
    config.train.loss = "mae"
    config.train.loss_kwargs = ml_collections.ConfigDict()
    config.train.log_every = 25
    config.train.eval_every = 200
    config.train.checkpoint_every = 200
    config.train.early_stopping_patience = 0  # evaluations without improvement; 0 = off
    config.train.smoothing = 0.6  # EMA factor of the validation loss for early stopping
    # Wall-clock budget of one run (minutes; 0 = none): training stops there, saves a checkpoint and
    # evaluates as if finished; running the same workdir again continues towards num_steps.
    config.train.time_limit_minutes = 0.0
    config.train.progress_bar = True
    # Validation batches (of batch_size) per evaluation; 0: the whole validation split.
    config.train.eval_batches = 0

    config.task = "regression"  # regression (U-Nets, HighResNet, ResNet), rim, ddpm or gan

    # ---- contrast-transfer GAN (config.task = "gan"; qmri_jax.tasks.gan.GanConfig) ----
    config.gan = ml_collections.ConfigDict()
    config.gan.disc_features = (32, 64, 128)  # PatchGAN: channels of its stride-2 blocks
    config.gan.disc_extra_convs = 1  # stride-1 conv3x3 after them (receptive field)
    config.gan.disc_noise = 0.05  # std of the Gaussian noise on its input in training
    config.gan.disc_learning_rate = 5e-4  # the rest of its optimiser is config.train's
    # Generator loss weights: MAE of the input re-synthesised through the maps; cross-entropy of
    # the synthesised target for its class; MAE against the acquired target of the same slice
    # (paired data); MAE of log T1, log T2, PD / PD_true against the true maps (synthetic data).
    config.gan.recon_weight = 1.0
    config.gan.adv_weight = 0.05
    config.gan.paired_weight = 0.0
    config.gan.maps_weight = 0.0
    config.gan.gen_pretrain_steps = 0  # the generator alone first, without the adversarial term
    config.gan.disc_pretrain_steps = 0  # then the discriminator alone
    config.gan.shift_px = 0  # random in-plane shifts of each training slice, up to this
    config.gan.data_consistency = False  # at inference: PD solved from the input given T1, T2

    # ---- conditional DDPM (config.task = "ddpm") ----
    config.ddpm = ml_collections.ConfigDict()
    config.ddpm.features = (32, 64, 64)
    config.ddpm.blocks_per_level = 1
    config.ddpm.attention_levels = ()
    config.ddpm.emb_dim = 0  # time-embedding width; 0: 4 x features[0] (MONAI)
    config.ddpm.schedule = "linear"
    config.ddpm.num_steps = 1000  # diffusion steps T
    config.ddpm.prediction = "eps"  # eps | v | x0
    config.ddpm.snr_cap = 0.0  # 0: plain MSE of the target; g >= 1: x0 error weighted min(1+SNR, g)
    config.ddpm.sampler = "ddim"  # ddim | ddpm
    config.ddpm.sample_steps = 50
    config.ddpm.eta = 0.0
    config.ddpm.num_samples = 10  # posterior draws per slice
    config.ddpm.eval_slices = 16  # test-split slices sampled at the end of training
    config.ddpm.eval_batch = 4
    # Validation slices sampled to fit one std scale per map (sigma scaling, Laves et al. 2020) so
    # that mean +- 2 * scale * std covers 95% of validation voxels; 0: no calibration.
    config.ddpm.calibration_slices = 8
    config.ddpm.calibration_coverage = 0.95
    # Test-split brain voxels whose exact posterior (fitting.posterior, the main job's prior) the
    # model's mean and std are compared with (metrics.json uncertainty.exact); 0: off.
    config.ddpm.exact_voxels = 300
    # Training-time saturation: with this probability a slice's images are clipped at a level
    # drawn from saturation_range (units of the in-brain p95) and renormalised, as a 12-bit scanner
    # that clips bright voxels at 4095 would deliver them (data.acquisition.saturate).
    config.ddpm.saturation_augment = 0.0
    config.ddpm.saturation_range = (0.5, 1.5)
    # Give the network (and the "fit" condition's fit) the per-sample validity mask: samples that
    # are not measurements (clipped at the stored maximum, or absent) are NaN in the images a model
    # is given; they are zeroed and N mask channels follow the images, and the fit leaves them out
    # (diffusion.conditioning). Training then marks the clipped samples of saturation_augment and
    # drops samples at random: on a missing_augment fraction of the series (per voxel for the
    # per-voxel network, else per slice) each sample is absent with probability missing_rate.
    config.ddpm.validity = False
    config.ddpm.missing_augment = 0.0
    config.ddpm.missing_rate = 0.1
    # Give the network the images' noise level: log10(sigma / 0.01) as one more condition channel,
    # sigma measured on each slice's background in training and evaluation (predict takes it as
    # an argument). A posterior depends on the noise level, which a ten-sample series tells
    # poorly (the main job: test T1 4.81% with it, 5.22% without; docs/results.md).
    config.ddpm.noise_condition = False
    # What the network is conditioned on: "images" (the normalised series as it is) or "fit": the
    # images plus each voxel's least-squares IR fit (PD, T1, k; qmri_jax.fitting.fit_signals),
    # computed in the step from the images alone (IR protocols: ir, flair, ir_fse images).
    config.ddpm.condition = "images"
    # With condition "fit": diffuse the difference between the scaled maps and the voxelwise fit
    # (the sampled residual is added back), so the network learns a correction of the physics
    # estimate from the images around it rather than the maps from scratch.
    config.ddpm.residual = False
    # With residual: the residual is multiplied by these factors (() = 1; one, or one per target)
    # before it is diffused and divided by them after sampling, so that a map whose fit is close
    # (T1: a few percent, ~0.02 in scaled units) is diffused on the scale of the others.
    config.ddpm.residual_scale = ()
    # With residual and noise_condition: the targets (e.g. ("T1", "k")) whose residual is also
    # divided per voxel by the Cramer-Rao SD of their fit at the voxel's noise level
    # (diffusion.conditioning.fit_sd, held within [1e-3, 1] on the scaled maps), so that every
    # voxel's posterior spans about the same width of the diffusion's unit noise, however precise
    # its fit; residual_scale then multiplies that width. (): fixed factors only.
    config.ddpm.residual_crlb = ()
    # Computation dtype of the DDPM's network in training and sampling: "float32" or "bfloat16"
    # (mixed precision: float32 parameters, optimiser and GroupNorm statistics; the convolutions,
    # dense layers and attention in bfloat16). bfloat16 pays on GPUs and TPUs, not on the CPU.
    config.ddpm.dtype = "float32"
    # The denoising network: "unet" (DiffusionUNet, config.ddpm.features / attention_levels) or
    # "voxel" (VoxelDenoiser: the same time embedding, but every layer acts on one voxel's
    # channels, voxel_depth residual blocks voxel_width wide), which learns the per-voxel posterior
    # of the maps given that voxel's signal curve and has no spatial prior of the training anatomy.
    config.ddpm.network = "unet"
    config.ddpm.voxel_width = 128
    config.ddpm.voxel_depth = 3
    # With network "voxel": train each step on this many voxels drawn at random (without
    # replacement) from the batch's slices, each with its own diffusion step t; 0: whole slices.
    config.ddpm.voxel_batch = 0
    # How voxel_batch draws: "data" (as the batch has them) or "flat_T1" (brain voxels weighted by
    # 1 / the batch's count in their log-T1 bin, with replacement: a flat log-T1 prior instead of
    # the brains' white/grey-matter histogram; qmri_jax.diffusion.voxel_draw.flat_t1_weights).
    config.ddpm.voxel_prior = "data"
    # With voxel_prior "flat_T1": the background voxels' share of the draw, in [0, 1) (< 0: their
    # share of the batch). Their residual around the fit is ~1 (a noise-only voxel's fit against
    # the background's -1), so at the batch's share (~60%) they carry ~95% of the loss.
    config.ddpm.voxel_background = -1.0
    # With voxel_batch: this fraction of the drawn brain voxels gets a new T1 (log-uniform in
    # voxel_t1_range, ms) and k (uniform in voxel_k_range), its series simulated again with the
    # voxelwise IR model at the voxel's fitted amplitude (PD target kept), with Rician noise at an
    # amplitude SNR log-uniform in voxel_snr_range (diffusion.voxel_draw.resimulate_voxels): a
    # continuous prior where the synthetic subjects have a few clumped T1 values, and scans less
    # noisy than the training data. 0: off.
    config.ddpm.voxel_resimulate = 0.0
    # The re-simulated voxels' PD target: "keep" (in the loss) or "drop" (left out of the loss,
    # so they teach T1 and k only). A voxel's curve amplitude is PD x exp(-TE / T2) x the
    # receive and normalisation scales, and in brains T2 goes with T1; a redrawn T1 breaks that
    # link, and with "keep" the model learns PD from curves whose T1 says nothing about it.
    config.ddpm.voxel_resimulate_pd = "keep"
    config.ddpm.voxel_t1_range = (20.0, 5000.0)
    config.ddpm.voxel_k_range = (0.8, 1.2)
    config.ddpm.voxel_snr_range = (20.0, 1000.0)

    # ---- 3D GE -> TSE translation (config.task = "translation"; configs/high_to_low.py;
    # qmri_jax.tasks.translation.TranslationSettings) ----
    config.data.slice_factor = 4  # TSE slice thickness in GE voxels (translation data)
    config.translation = ml_collections.ConfigDict()
    config.translation.mode = "high_to_low"  # high_to_low | low_to_low
    config.translation.patch = (32, 32, 32)  # training / inference patch, thin-slice voxels
    config.translation.patches_per_epoch = 64  # fresh random patches per epoch
    config.translation.validation_patches = 16
    config.translation.kernel = (1 / 6, 1 / 3, 1 / 3, 1 / 6)  # thick-slice kernel, stride f
    config.translation.kernel_offset = 0  # its first tap relative to the slice's first voxel
    config.translation.consistency = 1  # back-projection steps onto acquired thick slices (0: off)
    config.translation.kernel_mode = "fixed"  # fixed | moving | learned
    config.translation.kernel_shift = 1  # moving: random shift per example, thin slices
    config.translation.kernel_learn_steps = (0, 0)  # learned: steps [start, end), net frozen
    config.translation.mind_weight = 0.0  # x the 3D MIND loss against the input GE
    config.translation.loss_region = "all"  # L1 over: all (background included) | brain
    config.translation.flip = True  # left-right flips of training patches
    config.translation.fusion_sigma = 1 / 6  # Gaussian patch fusion: sigma / patch
    config.translation.fusion_stride = 1 / 3  # stride / patch
    config.translation.eval_batch = 4

    config.eval = ml_collections.ConfigDict()
    config.eval.figures = True

    config.predict = ml_collections.ConfigDict()
    config.predict.inputs = ""  # comma-separated NIfTI files (one per contrast) or a DICOM folder
    config.predict.output = ""  # output folder ("" = WORKDIR/predict)
    config.predict.protocol = ""  # name of the inputs' protocol ("" = the training protocol)
    config.predict.allow_protocol_mismatch = False
    config.predict.batch_size = 8  # slices per call of the task's predict
    config.predict.thick_tse = ""  # translation: the acquired thick-slice TSE NIfTI (consistency)
    return config
