"""Video contrast: clips of the same video are positives (the ρ-methods of Feichtenhofer et al.,
2021, and CVRL's clip sampling).

``video_simclr``, ``video_moco`` and ``video_byol`` are SimCLR, MoCo v2 and BYOL unchanged except
for what they read: the ``video_clips`` views (B, ρ, T, 3, H, W) give ρ >= 2 clips per video,
and each clip (B, T, 3, H, W) plays the part of one image view, embedded by a video backbone
(:mod:`clvr.methods.video_backbones`: a (2+1)D ResNet, or any image backbone applied frame by
frame and pooled over time, ``frames:resnet18``). With ρ > 2 the losses cover every pair of clips
(SimCLR, BYOL) or the first clip against every other (MoCo; every pair with ``symmetric``).

The defaults follow the ρ-paper: 8 frames at stride 8, ρ = 2, 112 px here (the pipeline's
default) with R(2+1)D-18.
"""

from __future__ import annotations

from dataclasses import dataclass

from .byol import BYOL
from .errors import MethodError
from .moco import MoCoV2
from .registry import register_method
from .simclr import SimCLR
from .video_backbones import video_backbone


class VideoViews:
    """Mixin: read ρ clips per video and embed them with a video backbone."""
    views = "video_clips"
    view_options = {"clips": 2, "frames": 8, "stride": 8}
    recipe = "simclr"

    @classmethod
    def check_config(cls, config) -> None:
        super().check_config(config)
        if config.input_norm != "none":
            raise MethodError(f"method {cls.name!r}: input_norm = {config.input_norm!r} is for image backbones; "
                              "video backbones take their clips as they come (input_norm: none)")

    def views_to_contrast(self, batch, count=None, at_least=1):
        clips = self.view(batch, "clips", 6)                        # (B, rho, T, 3, H, W)
        rho = clips.shape[1]
        if rho < max(at_least, 2) or (count is not None and rho != count):
            raise MethodError(f"method {self.name!r} needs at least 2 clips per video (view option "
                              f"clips), got {rho}")
        return list(clips.unbind(1))

    input_kind = "video"

    def backbone_options(self) -> dict:
        c = self.config
        options = {} if "timm:" in c.backbone else {"norm": c.norm}
        if c.backbone.startswith("frames:") and options:
            options["stem"] = c.stem             # the image backbone's stem
        if c.width and options:
            options["width"] = c.width
        return options

    def make_backbone(self):
        try:
            return video_backbone(self.config.backbone, **self.backbone_options())
        except ValueError as e:
            raise MethodError(f"method {self.name!r}: {e}") from None


@register_method("video_simclr")
class VideoSimCLR(VideoViews, SimCLR):
    reported = ""
    paper = "Feichtenhofer et al., A Large-Scale Study on Unsupervised Spatiotemporal Representation Learning, CVPR 2021"

    @dataclass
    class Config(SimCLR.Config):
        backbone: str = "r2plus1d_18"


@register_method("video_moco")
class VideoMoCo(VideoViews, MoCoV2):
    paper = VideoSimCLR.paper
    reported = "Kinetics-400: 66.6 (ρ=2), 71.0 (ρ=4)"

    @dataclass
    class Config(MoCoV2.Config):
        backbone: str = "r2plus1d_18"


@register_method("video_byol")
class VideoBYOL(VideoViews, BYOL):
    paper = VideoSimCLR.paper
    reported = "Kinetics-400: 67.4 (ρ=2), 70.1 (ρ=4)"

    @dataclass
    class Config(BYOL.Config):
        backbone: str = "r2plus1d_18"
