"""ISiC-Net: the image-signal correlation network of the seed talk, small enough for a 2-core trainer.

Modules, each switchable so the ablation (signal; + image; + RG; + ISiCA; + REC) is this same code:
- signal encoder: signal tokens Q = W2·ReLU(W1·C) from the preprocessed spectrum C; with a measured
  room temperature (`use_temperature`, our addition) W1·C is scaled and shifted by it (FiLM), because a
  room's temperature moves the water bands against the fibres' (0.4 nm/K) and the spectrum alone cannot
  tell a cold room from another fibre mix; "no sensor" is an input of its own, trained by dropout;
- image encoder: ViT-style (convolutional patch embedding, class token, position embedding,
  pre-norm transformer encoder) over one microscope tile;
- candidate region generation (RG): cosine similarity SIM_ij between patch features P_i and
  signal tokens Q_j; a patch's relevance max_j SIM_ij gates it, and a softmax over patches per
  token pools the regions relevant to each token;
- image-signal correlation attention (ISiCA), both directions: H = [P; P⊙Q], U = [Q; P⊙Q],
  S = w_s·H, M = w_m·U, softmax each way, Q̂_i = Σ_j a_ij Q_j, P̂_j = Σ_i b_ji P_i;
- reconstruction (REC): training-only decoders that rebuild the spectrum from the fused feature
  and masked image patches from their tokens (never exported);
- heads: composition (softmax over fibres, rows sum to 1) and blend-class logits; in training also
  an image-only probe on the tile-averaged class tokens (deep supervision of the image encoder);
- fibre counter (our addition, the microscopist's counting method): `FibreCounter`, a separate small
  graph of depthwise-separable convolutions with a dilated stage (EPRNet's building blocks, cheap on
  the NPU), runs on every usable tile of every frame as the frames arrive and says how much fibre of
  each type crosses each tile (fibre length in tile sides); the station sums it over all tiles of all
  frames and the fusion gets those totals (`fibre_counts`) as type shares plus log of the total, so
  every fibre in view is counted, not only the B tiles the encoder sees.

A measurement is one spectrum and B tiles. Every tile row gets its own outputs (the runtime
averages rows), and each row also sees the mean of all B tile features, because a single tile
shows only a few fibres while the blend shows in many.

Only ops on the ATC allow-list are used at inference (MatMul, Conv, Relu, Softmax, Erf, Reduce*, Log,
elementwise arithmetic, Reshape/Transpose/Concat/Slice); shapes are static.
"""

from dataclasses import asdict, dataclass
from typing import Any, Dict, Optional

import torch
from torch import nn

from isic_station.preprocess.room import TEMPERATURE_FEATURES

# Share below which a counted fibre adds no more evidence of absence (log 0.02 = -3.9 in the logits):
# the counter mistakes a few per cent of the length, so a smaller floor would veto present fibres.
COUNT_SKIP_FLOOR = 0.02


@dataclass
class NetConfig:
    """Sizes and module switches; stored in the checkpoint and the manifest's training section."""

    spectrum_points: int
    n_fibres: int
    n_classes: int
    channels: int = 1
    tile_px: int = 64
    dim: int = 48
    depth: int = 2
    heads: int = 4
    mlp_dim: int = 96
    signal_tokens: int = 8
    signal_hidden: int = 192
    head_hidden: int = 128
    use_image: bool = True
    use_rg: bool = True
    use_isica: bool = True
    use_rec: bool = True
    rec_mask_ratio: float = 0.15
    use_counts: bool = True
    count_skip: bool = False   # log of the unmixed counted shares added to the composition logits
    use_temperature: bool = False  # the graphs take `temperature` [B, 2] (`isic_station.preprocess.room`)

    @property
    def patch_px(self) -> int:
        """Pixels per patch side: the convolutional patch embedding downsamples by 8."""
        return 8

    @property
    def n_patches(self) -> int:
        return (self.tile_px // self.patch_px) ** 2

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


class Attention(nn.Module):
    """Multi-head self-attention written out as the seed's MindSpore cell (qkv Dense, BatchMatMul)."""

    def __init__(self, dim: int, heads: int, n_tokens: int) -> None:
        super().__init__()
        self.heads, self.n_tokens, self.dim = heads, n_tokens, dim
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Sizes are constants (not read from x.shape) so the exported graph has static shapes.
        n, c = self.n_tokens, self.dim
        qkv = self.qkv(x).reshape(-1, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * self.scale, dim=-1)
        out = torch.matmul(attn, v).transpose(1, 2).reshape(-1, n, c)
        return self.out(out)


class TransformerBlock(nn.Module):
    """Pre-norm transformer layer: x + Attn(LN(x)), then x + FFN(LN(x))."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, n_tokens: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, n_tokens)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Linear(mlp_dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


class ImageEncoder(nn.Module):
    """ViT over one tile: a small convolutional patch embedding (8x8 px per token), class token,
    learned position embedding and a transformer encoder. Optional token masking feeds REC."""

    def __init__(self, cfg: NetConfig) -> None:
        super().__init__()
        d = cfg.dim
        self.patch_embedding = nn.Sequential(
            nn.Conv2d(cfg.channels, 16, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, d, 2, stride=2),
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embedding = nn.Parameter(torch.randn(1, cfg.n_patches + 1, d) * 0.02)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, d))
        self.n_patches, self.dim = cfg.n_patches, d
        self.transformer = nn.Sequential(
            *[TransformerBlock(d, cfg.heads, cfg.mlp_dim, cfg.n_patches + 1) for _ in range(cfg.depth)]
        )
        self.norm = nn.LayerNorm(d)

    def forward(self, tiles: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """tiles [T, C, P, P] -> tokens [T, 1 + Np, d] (class token first); mask [T, Np] replaces patches."""
        x = self.patch_embedding(tiles).reshape(-1, self.dim, self.n_patches).transpose(1, 2)
        if mask is not None:
            x = torch.where(mask.unsqueeze(-1), self.mask_token.expand_as(x), x)
        # Broadcasting (not expand) keeps the exported shapes static.
        cls = x[:, :1] * 0 + self.cls_token
        x = torch.cat([cls, x], dim=1) + self.pos_embedding
        return self.norm(self.transformer(x))


class SignalEncoder(nn.Module):
    """Signal tokens Q = W2·ReLU(W1·C): every token is a learned view of the whole spectrum."""

    def __init__(self, cfg: NetConfig) -> None:
        super().__init__()
        self.tokens, self.dim = cfg.signal_tokens, cfg.dim
        self.w1 = nn.Linear(cfg.spectrum_points, cfg.signal_hidden)
        self.w2 = nn.Linear(cfg.signal_hidden, cfg.signal_tokens * cfg.dim)
        self.pos_embedding = nn.Parameter(torch.randn(1, cfg.signal_tokens, cfg.dim) * 0.02)
        self.norm = nn.LayerNorm(cfg.dim)
        if cfg.use_temperature:
            # FiLM of the hidden layer by the room: zero at the start, so training begins from the
            # spectrum-only encoder and learns what the temperature changes.
            self.film_scale = nn.Linear(TEMPERATURE_FEATURES, cfg.signal_hidden)
            self.film_shift = nn.Linear(TEMPERATURE_FEATURES, cfg.signal_hidden)
            for layer in (self.film_scale, self.film_shift):
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)

    def forward(self, spectrum: torch.Tensor, temperature: Optional[torch.Tensor] = None) -> torch.Tensor:
        """spectrum [T, S], temperature [T, 2] (models with `use_temperature`) -> signal tokens [T, Nq, d]."""
        hidden = self.w1(spectrum)
        if temperature is not None:
            hidden = hidden * (1.0 + self.film_scale(temperature)) + self.film_shift(temperature)
        q = self.w2(torch.relu(hidden)).reshape(-1, self.tokens, self.dim)
        return self.norm(q + self.pos_embedding)


def _unit(x: torch.Tensor) -> torch.Tensor:
    """x / ||x|| along the last axis (written out so ONNX gets ReduceSum/Sqrt, not a norm op)."""
    return x / torch.sqrt((x * x).sum(dim=-1, keepdim=True) + 1e-6)


class RegionGeneration(nn.Module):
    """RG: SIM_ij = <P_i/|P_i|, Q_j/|Q_j|>; patches gated by relevance max_j SIM_ij; for each token j
    the regions most similar to it pooled by a softmax over patches (Q_rel)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gate_scale = nn.Parameter(torch.tensor(5.0))
        self.gate_shift = nn.Parameter(torch.tensor(0.0))
        self.temperature = nn.Parameter(torch.tensor(10.0))
        self.proj = nn.Linear(dim, dim)

    def forward(self, patches: torch.Tensor, tokens: torch.Tensor):
        sim = torch.matmul(_unit(patches), _unit(tokens).transpose(1, 2))  # [T, Np, Nq]
        relevance = sim.max(dim=-1, keepdim=True)[0]  # [T, Np, 1]
        gated = patches * torch.sigmoid(self.gate_scale * relevance + self.gate_shift)
        pool = torch.softmax(sim.transpose(1, 2) * self.temperature, dim=-1)  # [T, Nq, Np]
        regions = torch.matmul(pool, patches)  # [T, Nq, d]
        return gated, self.proj(regions.mean(dim=1))


class CorrelationAttention(nn.Module):
    """ISiCA: S_ij = w_s·[P_i; P_i⊙Q_j] and M_ij = w_m·[Q_j; P_i⊙Q_j], softmax over tokens (a) and
    over patches (b); returns the patch-side and signal-side fused vectors."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.ws_p = nn.Linear(dim, 1, bias=False)
        self.ws_pq = nn.Parameter(torch.randn(dim) * dim**-0.5)
        self.wm_q = nn.Linear(dim, 1, bias=False)
        self.wm_pq = nn.Parameter(torch.randn(dim) * dim**-0.5)
        self.fuse_patch = nn.Sequential(nn.Linear(3 * dim, dim), nn.GELU())
        self.fuse_signal = nn.Sequential(nn.Linear(3 * dim, dim), nn.GELU())

    def forward(self, patches: torch.Tensor, tokens: torch.Tensor):
        # S[i, j] = w_s_p·P_i + w_s_pq·(P_i ⊙ Q_j)
        s = self.ws_p(patches) + torch.matmul(patches * self.ws_pq, tokens.transpose(1, 2))  # [T, Np, Nq]
        # M[j, i] = w_m_q·Q_j + w_m_pq·(P_i ⊙ Q_j), kept token-major so both softmaxes run on the last axis
        m = self.wm_q(tokens) + torch.matmul(tokens * self.wm_pq, patches.transpose(1, 2))  # [T, Nq, Np]
        q_hat = torch.matmul(torch.softmax(s, dim=-1), tokens)  # [T, Np, d]: signal seen by each patch
        p_hat = torch.matmul(torch.softmax(m, dim=-1), patches)  # [T, Nq, d]: image seen by each token
        patch_side = self.fuse_patch(torch.cat([patches, q_hat, patches * q_hat], dim=-1)).mean(dim=1)
        signal_side = self.fuse_signal(torch.cat([tokens, p_hat, tokens * p_hat], dim=-1)).mean(dim=1)
        return patch_side, signal_side


@dataclass
class CounterConfig:
    """Sizes of the fibre counter; stored in the checkpoint and the manifest's training section."""

    n_fibres: int
    channels: int = 3
    tile_px: int = 64
    widths: tuple = (16, 32, 48, 64)

    def to_dict(self) -> Dict[str, Any]:
        return dict(asdict(self), widths=list(self.widths))


class SeparableBlock(nn.Module):
    """Depthwise 3x3 (optionally strided or dilated) then pointwise 1x1, each with BatchNorm and ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_in, 3, stride=stride, padding=dilation, dilation=dilation, groups=c_in, bias=False),
            nn.BatchNorm2d(c_in),
            nn.ReLU(),
            nn.Conv2d(c_in, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class FibreCounter(nn.Module):
    """Per tile: the fibre length of each type crossing it, in tile sides (tiles [T, C, P, P] -> [T, F]).

    A strided stem, three depthwise-separable stages down to P/16 with a dilated stage between them
    (context wider than a fibre's width, for twist and nodes), global mean, then two heads: the
    fibre-type distribution (F types plus "no fibre") and the total length. The output is their
    product, so summing it over tiles counts fibre length per type. Training also reads the two
    heads apart (`heads`).
    """

    def __init__(self, cfg: CounterConfig) -> None:
        super().__init__()
        self.cfg = cfg
        w = list(cfg.widths)
        self.features = nn.Sequential(
            nn.Conv2d(cfg.channels, w[0], 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(w[0]),
            nn.ReLU(),
            SeparableBlock(w[0], w[1], stride=2),
            SeparableBlock(w[1], w[2], stride=2),
            SeparableBlock(w[2], w[2], dilation=2),
            SeparableBlock(w[2], w[3], stride=2),
        )
        self.type_head = nn.Linear(w[3], cfg.n_fibres + 1)
        self.length_head = nn.Linear(w[3], 1)

    def heads(self, tiles: torch.Tensor):
        """(type logits [T, F+1], total length [T, 1] > 0; softplus, which never stops learning as ReLU can)."""
        pooled = self.features(tiles).mean(dim=(2, 3))
        return self.type_head(pooled), nn.functional.softplus(self.length_head(pooled))

    def forward(self, tiles: torch.Tensor) -> torch.Tensor:
        logits, length = self.heads(tiles)
        return torch.softmax(logits, dim=-1)[:, : self.cfg.n_fibres] * length


def count_features(counts: torch.Tensor) -> torch.Tensor:
    """Counted fibre length per type [T, F] -> [T, F + 1]: type shares and log(1 + total length)."""
    total = counts.sum(dim=-1, keepdim=True)
    return torch.cat([counts / (total + 1e-3), torch.log(total + 1.0)], dim=-1)


class ISiCNet(nn.Module):
    """The whole network; `forward` works on measurements (spectrum [N, S], tiles [N, B, C, P, P])."""

    def __init__(self, cfg: NetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        self.signal = SignalEncoder(cfg)
        self.signal_pool = nn.Sequential(nn.Linear(cfg.signal_tokens * d, d), nn.GELU())
        # Learned stand-ins for image-derived features when the camera failed (modality dropout).
        self.null_image = nn.Parameter(torch.zeros(d))
        self.null_signal_side = nn.Parameter(torch.zeros(d))
        self.null_counts = nn.Parameter(torch.zeros(cfg.n_fibres + 1))
        if cfg.use_image:
            self.image = ImageEncoder(cfg)
            self.image_pool = nn.Sequential(nn.Linear(2 * d, d), nn.GELU())
            if cfg.use_rg:
                self.rg = RegionGeneration(d)
            if cfg.use_isica:
                self.isica = CorrelationAttention(d)
            # Training-only probe: composition and blend from the image alone (class tokens averaged
            # over the tiles), so the image encoder learns fibre types even though the spectrum alone
            # already fits much of the loss. Not part of the exported graphs.
            self.image_probe = nn.Sequential(
                nn.Linear(d, cfg.head_hidden), nn.GELU(), nn.Linear(cfg.head_hidden, cfg.n_fibres + cfg.n_classes)
            )
        self.trunk = nn.Sequential(
            nn.Linear(4 * d + cfg.n_fibres + 1, cfg.head_hidden),
            nn.GELU(),
            nn.Linear(cfg.head_hidden, cfg.head_hidden),
            nn.GELU(),
        )
        self.composition_head = nn.Linear(cfg.head_hidden, cfg.n_fibres)
        if cfg.count_skip:
            # Counted length shares become mass fractions through a per-type factor (density x diameter^2),
            # and the counter's type confusion is a linear mix of them: unmix, then add the log to the
            # logits, so softmax starts from the counted composition and the trunk learns the rest.
            self.count_skip_head = nn.Linear(cfg.n_fibres + 1, cfg.n_fibres)
            with torch.no_grad():
                self.count_skip_head.weight.zero_()
                self.count_skip_head.weight[:, : cfg.n_fibres] += torch.eye(cfg.n_fibres)
                self.count_skip_head.bias.zero_()
        self.blend_head = nn.Linear(cfg.head_hidden, cfg.n_classes)
        if cfg.use_rec:
            self.spectrum_decoder = nn.Linear(cfg.head_hidden, cfg.spectrum_points)
            if cfg.use_image:
                self.patch_decoder = nn.Linear(d, cfg.channels * cfg.patch_px * cfg.patch_px)

    def _image_features(self, tokens: torch.Tensor, tiles: torch.Tensor, mask: Optional[torch.Tensor]):
        """Per-tile image vector and signal-side vector from ISiCA (or the null stand-in)."""
        enc = self.image(tiles, mask)
        cls, patches = enc[:, 0], enc[:, 1:]
        side = cls * 0 + self.null_signal_side
        if self.cfg.use_rg:
            patches, regions = self.rg(patches, tokens)
        else:
            regions = cls
        if self.cfg.use_isica:
            image_vec, side = self.isica(patches, tokens)
        else:
            image_vec = self.image_pool(torch.cat([patches.mean(dim=1), regions], dim=-1))
        return enc, image_vec, side

    def forward(
        self,
        spectrum: torch.Tensor,
        tiles: Optional[torch.Tensor] = None,
        image_present: Optional[torch.Tensor] = None,
        patch_mask: Optional[torch.Tensor] = None,
        counts: Optional[torch.Tensor] = None,
        temperature: Optional[torch.Tensor] = None,
    ) -> Dict[str, torch.Tensor]:
        """spectrum [N, S] (one per measurement) or [N, B, S] (one per tile row); tiles [N, B, C, P, P]
        or None (signal only); image_present [N] bool (modality dropout); patch_mask [N*B, Np] bool
        (REC masking, training); counts [N, F] or [N, B, F]: the fibre length per type the counter
        found over all tiles of all frames (None: the null stand-in, as without an image);
        temperature [N, 2] or [N, B, 2] (`isic_station.preprocess.room`; None: no sensor, all zeros).

        Returns composition [N, B, F] (rows sum to 1), blend_logits [N, B, K], and in training
        the REC reconstructions. Sizes come from the config and from the tiles' static size, never
        from traced shapes, so that the exported graphs have static shapes.
        """
        cfg, d = self.cfg, self.cfg.dim
        if spectrum.dim() == 3:
            b = int(spectrum.shape[1])
        else:
            b = 1 if tiles is None or not cfg.use_image else int(tiles.shape[1])
        if spectrum.dim() == 2:
            spectrum = spectrum.unsqueeze(1)
            if b > 1:
                spectrum = spectrum.expand(-1, b, -1)
        flat_spectrum = spectrum.reshape(-1, cfg.spectrum_points)
        room = None
        if cfg.use_temperature:
            if temperature is None:
                room = flat_spectrum[:, :TEMPERATURE_FEATURES] * 0
            else:
                if temperature.dim() == 2 and b > 1:
                    temperature = temperature.unsqueeze(1).expand(-1, b, -1)
                room = temperature.reshape(-1, TEMPERATURE_FEATURES)
        tokens = self.signal(flat_spectrum, room)  # [T, Nq, d], T = N*B
        signal_vec = self.signal_pool(tokens.reshape(-1, cfg.signal_tokens * d))
        absent = signal_vec * 0  # [T, d] zeros, broadcast target for the null stand-ins
        out: Dict[str, torch.Tensor] = {}
        if tiles is not None and cfg.use_image:
            flat_tiles = tiles.reshape(-1, cfg.channels, cfg.tile_px, cfg.tile_px)
            enc, image_vec, side = self._image_features(tokens, flat_tiles, patch_mask)
            # Every row also sees the mean over the measurement's B tiles.
            per_tile = image_vec.reshape(-1, b, d)
            image_mean = (per_tile * 0 + per_tile.mean(dim=1, keepdim=True)).reshape(-1, d)
            if counts is not None and cfg.use_counts:
                if counts.dim() == 2:
                    counts = counts.unsqueeze(1).expand(-1, b, -1)
                counted = count_features(counts.reshape(-1, cfg.n_fibres))
            else:
                counted = absent[:, :1] * 0 + self.null_counts
            if image_present is not None:
                keep = image_present.to(image_vec.dtype).reshape(-1, 1, 1).expand(-1, b, 1).reshape(-1, 1)
                image_vec = keep * image_vec + (1 - keep) * self.null_image
                image_mean = keep * image_mean + (1 - keep) * self.null_image
                side = keep * side + (1 - keep) * self.null_signal_side
                counted = keep * counted + (1 - keep) * self.null_counts
            if cfg.use_rec and self.training and patch_mask is not None:
                out["patch_rec"] = self.patch_decoder(enc[:, 1:])
            if self.training:
                probe = self.image_probe(enc[:, 0].reshape(-1, b, d).mean(dim=1))
                out["image_composition"] = torch.softmax(probe[:, : cfg.n_fibres], dim=-1)
                out["image_blend_logits"] = probe[:, cfg.n_fibres :]
        else:
            image_vec = absent + self.null_image
            image_mean = image_vec
            side = absent + self.null_signal_side
            counted = signal_vec[:, :1] * 0 + self.null_counts
        hidden = self.trunk(torch.cat([signal_vec, side, image_vec, image_mean, counted], dim=-1))
        logits = self.composition_head(hidden)
        if cfg.count_skip:
            logits = logits + torch.log(torch.relu(self.count_skip_head(counted)) + COUNT_SKIP_FLOOR)
        out["composition"] = torch.softmax(logits, dim=-1).reshape(-1, b, cfg.n_fibres)
        out["blend_logits"] = self.blend_head(hidden).reshape(-1, b, cfg.n_classes)
        if cfg.use_rec and self.training:
            out["spectrum_rec"] = self.spectrum_decoder(hidden).reshape(-1, b, cfg.spectrum_points)
        return out


class BimodalGraph(nn.Module):
    """The exported bimodal graph: spectrum [B, S], image [B, C, P, P], then fibre_counts [B, F] (`with_counts`)
    and temperature [B, 2] (a net with `use_temperature`) -> composition [B, F], blend_logits [B, K]."""

    def __init__(self, net: ISiCNet, with_counts: bool = True) -> None:
        super().__init__()
        self.net = net
        self.with_counts = with_counts

    def forward(self, spectrum: torch.Tensor, image: torch.Tensor, *optional: torch.Tensor):
        """`optional` in the order above (the exporter passes inputs by position). Without `fibre_counts`
        (a model exported without a counter) the null counts stand in."""
        fibre_counts = optional[0] if self.with_counts else None
        temperature = optional[-1] if self.net.cfg.use_temperature else None
        counts = None if fibre_counts is None else fibre_counts.unsqueeze(0)
        room = None if temperature is None else temperature.unsqueeze(0)
        out = self.net(spectrum.unsqueeze(0), image.unsqueeze(0), counts=counts, temperature=room)
        composition, logits = out["composition"][0], out["blend_logits"][0]
        # The ablation variants keep the contract's inputs (the exporter would drop an unused input);
        # what they do not use contributes exactly zero.
        if not self.net.cfg.use_image:
            logits = logits + image[:, 0, 0, :1] * 0
        if fibre_counts is not None and not (self.net.cfg.use_image and self.net.cfg.use_counts):
            logits = logits + fibre_counts[:, :1] * 0
        return composition, logits


class CounterGraph(nn.Module):
    """The exported counter graph: image [T, C, P, P] -> fibre_length [T, F] (tile sides per type)."""

    def __init__(self, counter: FibreCounter) -> None:
        super().__init__()
        self.counter = counter

    def forward(self, image: torch.Tensor):
        return self.counter(image)


class SignalOnlyGraph(nn.Module):
    """The exported signal-only graph (camera failed): spectrum [1, S] (and temperature [1, 2] with
    `use_temperature`) -> composition [1, F], blend_logits [1, K]."""

    def __init__(self, net: ISiCNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, spectrum: torch.Tensor, temperature: Optional[torch.Tensor] = None):
        out = self.net(spectrum, temperature=temperature)
        return out["composition"][:, 0], out["blend_logits"][:, 0]
