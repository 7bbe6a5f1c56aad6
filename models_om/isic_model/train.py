"""`isic-model train`: ISiC-Net on virtual-lab measurements, exported and evaluated on a held-out seed.

Two stages, sized for the project's 2-core machine:
1. the fibre counter (`net.FibreCounter`) on every usable tile of a few frames per sample
   (`data.counter_tiles`, the lab's per-tile fibre length per type as truth), exported at once;
2. the data for ISiC-Net (`data.generate`: spectra, the best B tiles, and the fibre counts the
   exported counter finds on every usable tile of every frame, counted as the station counts them),
   then ISiC-Net itself (and the ablation variants, `--jobs 2` at once): a random subset of each
   measurement's tiles per step, modality dropout so the signal-only graph is trained too, the REC
   losses while `use_rec` is on; with `use_temperature` the room as the sensor reads it (noise, dropout).
Each measurement meets the plant's range of station settings (`[conditions]`) and of fabric and room
conditions (the `[preset]` mixture). The spectrum mean/std and the image mean/std written to the
manifest are the training sets'. Progress bars on stderr, one log line per epoch.
"""

import copy
import json
import logging
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np
from tqdm import tqdm

from isic_common.errors import ConfigError
from isic_drivers.lab.fibres import load_fibres
from isic_drivers.lab.sample import blend_classes
from isic_model.data import Conditions, LabSet, StationSettings, counter_tiles, generate
from isic_model.workers import stop_workers_on_sigterm
from isic_station.preprocess.room import DEFAULT_TEMPERATURE_INPUT, temperature_input

log = logging.getLogger(__name__)

# The ablation of the seed talk: each variant is the full network with modules switched off.
ABLATION_FLAGS: Dict[str, Dict[str, bool]] = {
    "signal": {"use_image": False, "use_rg": False, "use_isica": False, "use_rec": False},
    "image": {"use_image": True, "use_rg": False, "use_isica": False, "use_rec": False},
    "rg": {"use_image": True, "use_rg": True, "use_isica": False, "use_rec": False},
    "isica": {"use_image": True, "use_rg": True, "use_isica": True, "use_rec": False},
    "full": {"use_image": True, "use_rg": True, "use_isica": True, "use_rec": True},
}


def load_config(path: Path) -> Dict[str, Any]:
    """The training TOML; ConfigError names the file when it is missing or malformed."""
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        import tomli as tomllib
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"training config not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"training config {path} is not valid TOML: {exc}") from None


def _section(cfg: Dict[str, Any], name: str) -> Dict[str, Any]:
    try:
        return dict(cfg[name])
    except KeyError:
        raise ConfigError(f"training config has no [{name}] section") from None


def spectrum_params(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """The manifest's `spectrum` object before standardisation (mean 0, std 1)."""
    sec = _section(cfg, "spectrum")
    grid = np.arange(sec["grid_start_nm"], sec["grid_stop_nm"] + 1e-9, sec["grid_step_nm"])
    return {
        "wavelengths_nm": [round(float(w), 3) for w in grid],
        "reflectance_clip": [float(v) for v in sec["reflectance_clip"]],
        "scatter": sec["scatter"],
        "savgol": dict(sec["savgol"]) if sec.get("savgol") else None,
        "mean": [0.0] * len(grid),
        "std": [1.0] * len(grid),
    }


def image_params(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """The manifest's `image` object before normalisation (mean 0, std 1)."""
    sec = _section(cfg, "image")
    params = {
        "tile_px": int(sec["tile_px"]),
        "um_per_px": float(sec["um_per_px"]),
        "channels": int(sec["channels"]),
        "tiles_per_measurement": int(sec["tiles_per_measurement"]),
        "mean": 0.0,
        "std": 1.0,
    }
    if "max_tiles" in sec:
        params["max_tiles"] = int(sec["max_tiles"])
    if "camera_um_per_px_range" in sec:
        params["camera_um_per_px_range"] = [float(v) for v in sec["camera_um_per_px_range"]]
    if "conditions" in cfg:   # what training met is what the model accepts
        params.update(Conditions.from_table(cfg["conditions"]).accepted())
    return params


def station_settings(cfg: Dict[str, Any]) -> StationSettings:
    return StationSettings(**_section(cfg, "station"))


def conditions(cfg: Dict[str, Any]) -> Optional[Conditions]:
    """The `[conditions]` table (the station settings drawn per measurement), None without one."""
    return Conditions.from_table(cfg["conditions"]) if "conditions" in cfg else None


def _augment(tiles: Any, gen: Any) -> Any:
    """Fibres have no preferred orientation: a random quarter turn and flip per batch."""
    import torch

    k = int(torch.randint(4, (1,), generator=gen))
    tiles = torch.rot90(tiles, k, dims=(-2, -1))
    if bool(torch.rand(1, generator=gen) < 0.5):
        tiles = torch.flip(tiles, dims=(-1,))
    return tiles


def train_counter(
    cfg: Dict[str, Any], tiles_u8: np.ndarray, lengths: np.ndarray, seed: int, image_norm: Tuple[float, float]
) -> Tuple[Any, Dict[str, Any]]:
    """Train the fibre counter on tiles [M, C, P, P] uint8 and their fibre length per type [M, F]."""
    import torch
    from torch.nn import functional as tf

    from isic_model.net import CounterConfig, FibreCounter

    torch.set_num_threads(int(cfg.get("torch_threads", 2)))
    torch.manual_seed(seed)
    sec = _section(cfg, "counter")
    img = image_params(cfg)
    counter = FibreCounter(CounterConfig(n_fibres=lengths.shape[1], channels=img["channels"], tile_px=img["tile_px"],
                                         widths=tuple(sec.get("widths", (16, 32, 48, 64)))))
    mean, std = image_norm
    tiles = torch.from_numpy(tiles_u8)
    total = torch.from_numpy(lengths.sum(axis=1, keepdims=True)).float()
    shares = torch.cat([torch.from_numpy(lengths).float() / total.clamp_min(1e-6), (total <= 0).float()], dim=-1)
    n, batch, epochs = len(tiles), int(sec["batch"]), int(sec["epochs"])
    held = max(1, n // 20)   # the last 5 % measure how well it counts (per-tile L1 of the lengths)
    n_train = n - held
    steps = math.ceil(n_train / batch)
    optimiser = torch.optim.AdamW(counter.parameters(), lr=float(sec["lr"]), weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=float(sec["lr"]), total_steps=epochs * steps,
                                                   pct_start=0.15)
    gen = torch.Generator().manual_seed(seed)
    history, start = [], time.perf_counter()
    bar = tqdm(total=epochs * steps, desc="train counter", unit="step", file=sys.stderr)

    # channels-last: PyTorch's CPU depthwise convolutions train about 4x faster in that layout.
    counter = counter.to(memory_format=torch.channels_last)

    def inputs(rows: Any) -> Any:
        return ((tiles[rows].float() / 255.0 - mean) / std).contiguous(memory_format=torch.channels_last)

    for epoch in range(epochs):
        counter.train()
        order = torch.randperm(n_train, generator=gen)
        sums = np.zeros(2)
        for step in range(steps):
            rows = order[step * batch:(step + 1) * batch]
            logits, length = counter.heads(_augment(inputs(rows), gen))
            type_ce = -(shares[rows] * tf.log_softmax(logits, dim=-1)).sum(-1).mean()
            length_l1 = (length - total[rows]).abs().mean()
            loss = type_ce + float(sec.get("length_weight", 1.0)) * length_l1
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            sums += [type_ce.item(), length_l1.item()]
            bar.update(1)
        counter.eval()
        with torch.no_grad():
            rows = torch.arange(n_train, n)
            predicted = torch.cat([counter(inputs(rows[i:i + 512])) for i in range(0, held, 512)])
            truth = torch.from_numpy(lengths[n_train:])
            held_l1 = float((predicted - truth).abs().sum(-1).mean())
            # Count share error summed over the held-out tiles, as a measurement sums them.
            share_err = float((predicted.sum(0) / predicted.sum() - truth.sum(0) / truth.sum()).abs().sum())
        means = sums / steps
        history.append({"epoch": epoch + 1, "type_ce": means[0], "length_l1": means[1], "heldout_tile_l1": held_l1,
                        "heldout_share_l1": share_err})
        bar.set_postfix(ce=f"{means[0]:.3f}", l1=f"{held_l1:.3f}")
        log.info("counter epoch %d: type CE %.4f, length L1 %.4f; held-out per-tile L1 %.4f, pooled share L1 %.4f",
                 epoch + 1, means[0], means[1], held_l1, share_err)
    bar.close()
    counter = counter.to(memory_format=torch.contiguous_format).eval()
    return counter, {"history": history, "train_seconds": round(time.perf_counter() - start, 1), "tiles": n,
                     "heldout_tiles": held}


def fibre_set() -> Tuple[list, list]:
    """The station's fibres and the lab's blend labels over them (1-3 fibres)."""
    fibres = load_fibres().default_set()
    return list(fibres), blend_classes(fibres)


def _patch_pixels(tiles, patch_px: int):
    """[T, C, P, P] -> [T, Np, C*p*p] in the patch embedding's row-major order (the REC target)."""
    t, c, p, _ = tiles.shape
    g = p // patch_px
    x = tiles.reshape(t, c, g, patch_px, g, patch_px).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(t, g * g, c * patch_px * patch_px)


def _sensor_reading(rooms: Any, opt_cfg: Dict[str, Any], gen: Any) -> Any:
    """The `temperature` input as a station's sensor gives it: off by `temperature_noise_k` (sd, kelvin: the
    sensor sits in the spectrometer, not in the fabric) and missing for `temperature_dropout` of the rows
    (a firmware without a sensor), so the model learns to answer without it too."""
    import torch

    noise = torch.randn(len(rooms), generator=gen) * float(opt_cfg.get("temperature_noise_k", 0.0))
    scaled = rooms[:, 0] + noise / float(DEFAULT_TEMPERATURE_INPUT["scale_k"])
    read = (torch.rand(len(rooms), generator=gen) >= float(opt_cfg.get("temperature_dropout", 0.0))).float()
    return torch.stack([scaled * read, rooms[:, 1] * read], dim=-1)


def train_network(
    cfg: Dict[str, Any], data: LabSet, flags: Dict[str, bool], seed: int, n_classes: int, desc: str = "train",
    image_norm: Optional[Tuple[float, float]] = None,
) -> Tuple[Any, Dict[str, Any]]:
    """Train one network variant on `data`; returns (net in eval mode, normalisation and history).

    `image_norm` (mean, std) is the counter's (both graphs read the same tiles, and the set's counts are
    used); None: no counter, the set's own pixel mean/std."""
    import torch
    from torch.nn import functional as tf

    from isic_model.net import ISiCNet, NetConfig

    torch.set_num_threads(int(cfg.get("torch_threads", 2)))
    torch.manual_seed(seed)
    opt_cfg = _section(cfg, "optim")
    img = image_params(cfg)
    net_cfg = NetConfig(
        spectrum_points=data.features.shape[1],
        n_fibres=data.composition.shape[1],
        n_classes=n_classes,
        channels=img["channels"],
        tile_px=img["tile_px"],
        **_section(cfg, "network"),
        **flags,
    )
    net = ISiCNet(net_cfg)
    spec_mean = data.features.mean(axis=0)
    spec_std = np.maximum(data.features.std(axis=0), 1e-6)
    img_mean, img_std = image_norm if image_norm is not None else pixel_norm(data.tiles)

    spectra = torch.from_numpy((data.features - spec_mean) / spec_std).float()
    tiles_u8 = torch.from_numpy(data.tiles)
    # Counted fibre lengths when the set was counted (a config with a [counter] stage), else none.
    counts = torch.from_numpy(data.counts).float() if image_norm is not None and data.counts.size else None
    net_cfg.use_counts = counts is not None
    target = torch.from_numpy(data.composition).float()
    labels = torch.from_numpy(data.labels).long()
    rooms = (torch.from_numpy(np.stack([temperature_input(t, DEFAULT_TEMPERATURE_INPUT) for t in data.temperature_c]))
             if net_cfg.use_temperature else None)
    n, b_all = len(data), data.tiles.shape[1]
    b_train = min(int(opt_cfg["train_tiles"]), b_all)
    batch, epochs = int(opt_cfg["batch"]), int(opt_cfg["epochs"])
    steps_per_epoch = math.ceil(n / batch)
    optimiser = torch.optim.AdamW(
        net.parameters(), lr=float(opt_cfg["lr"]), weight_decay=float(opt_cfg["weight_decay"])
    )
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=float(opt_cfg["lr"]), total_steps=epochs * steps_per_epoch, pct_start=0.15
    )
    gen = torch.Generator().manual_seed(seed)
    history = []
    start = time.perf_counter()
    bar = tqdm(total=epochs * steps_per_epoch, desc=desc, unit="step", file=sys.stderr)
    net.train()
    for epoch in range(epochs):
        order = torch.randperm(n, generator=gen)
        totals = np.zeros(3)
        for step in range(steps_per_epoch):
            idx = order[step * batch : (step + 1) * batch]
            x = spectra[idx]
            tiles = None
            present = None
            patch_mask = None
            if net_cfg.use_image:
                pick = torch.randperm(b_all, generator=gen)[:b_train]
                tiles = _augment((tiles_u8[idx][:, pick].float() / 255.0 - img_mean) / img_std, gen)
                present = torch.rand(len(idx), generator=gen) >= float(opt_cfg["modality_dropout"])
                if net_cfg.use_rec:
                    patch_mask = (
                        torch.rand(len(idx) * b_train, net_cfg.n_patches, generator=gen) < net_cfg.rec_mask_ratio
                    )
            room = _sensor_reading(rooms[idx], opt_cfg, gen) if net_cfg.use_temperature else None
            out = net(x, tiles, present, patch_mask, counts[idx] if tiles is not None and counts is not None else None,
                      room)
            rows = out["composition"].shape[1]
            comp_loss = (out["composition"] - target[idx].unsqueeze(1)).abs().sum(-1).mean()
            blend_loss = tf.cross_entropy(
                out["blend_logits"].reshape(-1, n_classes), labels[idx].repeat_interleave(rows)
            )
            loss = float(opt_cfg["composition_weight"]) * comp_loss + float(opt_cfg["blend_weight"]) * blend_loss
            if "image_composition" in out:
                # The tiles are there even when the fusion is trained without them (modality dropout).
                probe_l1 = (out["image_composition"] - target[idx]).abs().sum(-1).mean()
                probe_ce = tf.cross_entropy(out["image_blend_logits"], labels[idx])
                probe = probe_l1 + float(opt_cfg["blend_weight"]) * probe_ce
                loss = loss + float(opt_cfg.get("image_probe_weight", 0.0)) * probe
            rec_loss = torch.zeros(())
            if "spectrum_rec" in out:
                rec_loss = float(opt_cfg["rec_spectrum_weight"]) * tf.mse_loss(
                    out["spectrum_rec"], x.unsqueeze(1).expand_as(out["spectrum_rec"])
                )
            if "patch_rec" in out:
                flat = tiles.reshape(-1, *tiles.shape[2:])
                masked = patch_mask & present.repeat_interleave(b_train).unsqueeze(1)
                if bool(masked.any()):
                    err = (out["patch_rec"] - _patch_pixels(flat, net_cfg.patch_px)).square().mean(-1)
                    rec_loss = rec_loss + float(opt_cfg["rec_patch_weight"]) * err[masked].mean()
            optimiser.zero_grad()
            (loss + rec_loss).backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 2.0)
            optimiser.step()
            schedule.step()
            totals += [comp_loss.item(), blend_loss.item(), rec_loss.item()]
            bar.update(1)
        means = totals / steps_per_epoch
        history.append({"epoch": epoch + 1, "composition_l1": means[0], "blend_ce": means[1], "rec": means[2]})
        bar.set_postfix(l1=f"{means[0]:.3f}", ce=f"{means[1]:.3f}")
        log.info("%s epoch %d: composition L1 %.4f, blend CE %.4f, REC %.4f", desc, epoch + 1, *means)
    bar.close()
    net.eval()
    info = {
        "spectrum_mean": spec_mean.astype(float).tolist(),
        "spectrum_std": spec_std.astype(float).tolist(),
        "image_mean": img_mean,
        "image_std": img_std,
        "history": history,
        "train_seconds": round(time.perf_counter() - start, 1),
    }
    return net, info


def pixel_norm(tiles_u8: np.ndarray) -> Tuple[float, float]:
    """One scalar image mean/std over (a sample of) training pixels (the manifest schema's form)."""
    pixels = tiles_u8[:: max(1, len(tiles_u8) // 500)].astype(np.float32) / 255.0
    return float(pixels.mean()), float(max(pixels.std(), 1e-6))


def _normalised_params(cfg: Dict[str, Any], info: Dict[str, Any]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    spectrum = dict(spectrum_params(cfg), mean=info["spectrum_mean"], std=info["spectrum_std"])
    image = dict(image_params(cfg), mean=round(info["image_mean"], 6), std=round(info["image_std"], 6))
    return spectrum, image


def _training_record(
    cfg: Dict[str, Any], seed: int, variant: str, info: Dict[str, Any], data_seconds: float,
    counter_info: Optional[Dict[str, Any]] = None,
) -> Dict[str, Any]:
    record = {
        "model_version": str(cfg.get("model_version", "1")),
        "variant": variant,
        "preset": cfg["preset"],
        "seed": seed,
        "heldout_seed": int(cfg["heldout_seed"]),
        "samples": int(cfg["train_samples"]),
        "station": asdict(station_settings(cfg)),
        "optim": _section(cfg, "optim"),
        "data_seconds": round(data_seconds, 1),
        "train_seconds": info["train_seconds"],
        "history": info["history"],
    }
    if "conditions" in cfg:
        record["conditions"] = dict(cfg["conditions"])
    if counter_info is not None:
        record["counter"] = dict(counter_info, config=_section(cfg, "counter"))
    return record


def _save_checkpoint(
    path: Path,
    net: Any,
    record: Dict[str, Any],
    spectrum: Dict[str, Any],
    image: Dict[str, Any],
    fibres: list,
    classes: list,
    counter: Optional[Dict[str, Any]] = None,
) -> None:
    """`counter`: {"config", "state"} of the fibre counter the net was trained with (None: none)."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "config": net.cfg.to_dict(),
            "state": net.state_dict(),
            "counter": counter,
            "training": record,
            "spectrum": spectrum,
            "image": image,
            "fibres": fibres,
            "blend_classes": classes,
        },
        path,
    )


def load_counter(doc: Optional[Dict[str, Any]]) -> Any:
    """The FibreCounter of a checkpoint's {"config", "state"} (None for None), in eval mode."""
    if doc is None:
        return None
    from isic_model.net import CounterConfig, FibreCounter

    config = dict(doc["config"])
    counter = FibreCounter(CounterConfig(**dict(config, widths=tuple(config["widths"]))))
    counter.load_state_dict(doc["state"])
    return counter.eval()


def export_checkpoint(checkpoint: Path, out: Path, metrics: Optional[Dict[str, Any]] = None) -> Path:
    """Export a checkpoint written by `train` (ONNX graphs + manifest); returns the manifest path."""
    import torch

    from isic_model.export import export_model
    from isic_model.net import ISiCNet, NetConfig

    try:
        ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise ConfigError(f"checkpoint not found: {checkpoint}") from None
    net = ISiCNet(NetConfig(**ckpt["config"]))
    net.load_state_dict(ckpt["state"])
    net.eval()
    return export_model(
        net,
        out,
        ckpt["fibres"],
        ckpt["blend_classes"],
        ckpt["spectrum"],
        ckpt["image"],
        ckpt["training"],
        metrics=metrics,
        model_version=str(ckpt["training"].get("model_version", "1")),
        counter=load_counter(ckpt.get("counter")),
    )


def _counter_stage(cfg: Dict[str, Any], seed: int, fibres: list, work: Path, cache: Optional[Path],
                   jobs: int) -> Dict[str, Any]:
    """Stage 1 (in a spawned process, so this one forks variant workers before torch has run): the
    counter's tiles, the image mean/std, the trained counter, its ONNX graph for counting the data."""
    import torch

    from isic_model.export import export_counter_graph

    if not logging.getLogger().handlers:   # a spawned process: log its epochs like the parent
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    sec = _section(cfg, "counter")
    t0 = time.perf_counter()
    tiles, lengths = counter_tiles(seed + 500, int(sec["samples"]), cfg["preset"], station_settings(cfg),
                                   conditions(cfg), image_params(cfg), fibres,
                                   frames_per_sample=int(sec["frames_per_sample"]), parts=max(jobs, 1), jobs=jobs,
                                   cache_dir=cache)
    data_seconds = time.perf_counter() - t0
    mean, std = pixel_norm(tiles)
    norm = (round(mean, 6), round(std, 6))
    log.info("counter data: %d tiles in %.0f s, image mean %.4f std %.4f", len(tiles), data_seconds, *norm)
    counter, info = train_counter(cfg, tiles, lengths, seed, norm)
    path = work / "counter.onnx"
    work.mkdir(parents=True, exist_ok=True)
    export_counter_graph(counter, int(sec["tiles_per_run"]), path)
    return {"config": counter.cfg.to_dict(), "state": {k: v.clone() for k, v in counter.state_dict().items()},
            "onnx": path, "norm": norm, "info": dict(info, data_seconds=round(data_seconds, 1)),
            "torch": torch.__version__}


# The lab set shared with forked variant workers (copy-on-write, never pickled: it is hundreds of MB).
_SHARED: Dict[str, Any] = {}


def _train_variant(variant: str) -> Tuple[str, Path, float]:
    """Train, checkpoint and export one variant (in this process or a forked worker); returns its manifest."""
    cfg, data, seed, classes, fibres = (_SHARED[k] for k in ("cfg", "data", "seed", "classes", "fibres"))
    counter = _SHARED["counter"]
    net, info = train_network(cfg, data, ABLATION_FLAGS[variant], seed, len(classes), desc=f"train {variant}",
                              image_norm=counter["norm"] if counter else None)
    spectrum, image = _normalised_params(cfg, info)
    record = _training_record(cfg, seed, variant, info, _SHARED["data_seconds"], counter["info"] if counter else None)
    ckpt = _SHARED["work"] / f"{variant}.pt"
    _save_checkpoint(ckpt, net, record, spectrum, image, fibres, classes,
                     counter={"config": counter["config"], "state": counter["state"]} if counter else None)
    target = _SHARED["out"] if variant == "full" else _SHARED["out"] / "ablation" / variant
    return variant, export_checkpoint(ckpt, target), info["train_seconds"]


def _check_full_model(out: Path, cfg: Dict[str, Any], seed: int) -> None:
    """The ablation compares against the full model: refuse one trained on other data or another recipe."""
    path = out / "manifest.json"
    if not path.is_file():
        raise ConfigError(f"no full model at {path}: train it first (without --ablation-only) or give --out")
    training = json.loads(path.read_text(encoding="utf-8"))["training"]
    expected = {"seed": seed, "samples": int(cfg["train_samples"]), "model_version": str(cfg.get("model_version", "1"))}
    found = {key: training.get(key) for key in expected}
    if found != expected:
        raise ConfigError(f"the full model at {path} was trained with {found}, this config and seed give {expected}")


def _spawned(function: Any, *args: Any) -> Any:
    """`function(*args)` in a fresh spawned process (a torch-free parent can still fork afterwards)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                             initializer=stop_workers_on_sigterm) as pool:
        return pool.submit(function, *args).result()


def train_command(
    config: Path, seed: Optional[int], out: Optional[Path], ablation: bool, evaluate: bool, jobs: int = 1,
    train_full: bool = True,
) -> int:
    """Train the counter, generate and count the data, train the full model (and the ablation variants,
    `jobs` at a time), export, evaluate. Without `train_full` only the ablation variants are trained, beside
    the full model already in `out`, which must come from this config and seed."""
    cfg = load_config(config)
    seed = int(cfg["seed"] if seed is None else seed)
    if seed == int(cfg["heldout_seed"]):
        raise ConfigError(f"training seed {seed} equals heldout_seed in {config}: evaluation must use unseen data")
    if jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {jobs}")
    out = Path(out or cfg.get("out", "out/model"))
    if not train_full:
        _check_full_model(out, cfg, seed)
    work = Path(cfg.get("work_dir", "out/model-work"))
    cache = Path(cfg["cache_dir"]) if cfg.get("cache_dir") else None
    fibres, classes = fibre_set()
    data_jobs = int(cfg.get("data_jobs", 1))
    t0 = time.perf_counter()
    counter = None
    if "counter" in cfg:
        counter = _spawned(_counter_stage, cfg, seed, fibres, work, cache, data_jobs)
        print(f"counter: {counter['info']['tiles']} tiles, data {counter['info']['data_seconds']:.0f} s, "
              f"training {counter['info']['train_seconds']:.0f} s -> {counter['onnx']}", flush=True)
    t1 = time.perf_counter()
    data = generate(
        seed,
        int(cfg["train_samples"]),
        cfg["preset"],
        {},
        station_settings(cfg),
        spectrum_params(cfg),
        dict(image_params(cfg), mean=counter["norm"][0], std=counter["norm"][1]) if counter else image_params(cfg),
        fibres,
        classes,
        cache_dir=cache,
        conditions=conditions(cfg),
        counter_onnx=counter["onnx"] if counter else None,
        parts=max(data_jobs, 1),
        jobs=data_jobs,
    )
    data_seconds = time.perf_counter() - t1
    log.info("ISiC-Net data: %d measurements in %.0f s (the counter stage took %.0f s)", len(data), data_seconds,
             t1 - t0)
    variants = (["full"] if train_full else []) + (list(_section(cfg, "ablation")["variants"]) if ablation else [])
    _SHARED.update(cfg=cfg, data=data, seed=seed, classes=classes, fibres=fibres, data_seconds=data_seconds,
                   work=work, out=out, counter=counter)
    if jobs > 1 and len(variants) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # Fork before torch has run here, so each worker starts clean and reads the set in place.
        with ProcessPoolExecutor(min(jobs, len(variants)), mp_context=multiprocessing.get_context("fork")) as pool:
            results = list(pool.map(_train_variant, variants))
    else:
        results = [_train_variant(variant) for variant in variants]
    _SHARED.clear()
    manifests = {}
    for variant, manifest, train_seconds in results:
        manifests[variant] = manifest
        print(f"{variant}: data {data_seconds:.0f} s, training {train_seconds:.0f} s -> {manifest}", flush=True)
    print(f"total {time.perf_counter() - t0:.0f} s", flush=True)
    if evaluate and train_full:
        from isic_model.evaluate import record_metrics

        record_metrics(manifests["full"], cfg, copy.deepcopy(classes))
    return 0
