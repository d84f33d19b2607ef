"""The three model families, each built from a ModelConfig.

Every model maps {modality: (batch, frames, dim)} to (batch, frames, emotions).

- `tcn`: seed 002's temporal convolutional network over the concatenated modalities: residual
  blocks of two causal, weight-normalised, dilated convolutions (kernel 5, dilations 1, 2, 4,
  8 for 4 levels) with LeakyReLU and dropout.
- `lfan`: seed 002's leader-follower attentive fusion: a TCN on the leader modality, a narrow
  TCN on each follower; per frame, each modality's vector is projected to keys, queries and
  values, attends over the modalities (scaled dot product, residual, LayerNorm); the leader's
  vector concatenated with the attended vectors gives the output.
- `gru`: seed 000's multi-task recurrent model: a linear projection of the concatenated
  modalities, a bidirectional GRU, and one output per emotion (trained with the summed loss).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from affvx.trainers.spec import ModelConfig


class CausalBlock(nn.Module):
    """Two causal dilated convolutions with a residual connection."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, dilation: int, dropout: float
    ):
        super().__init__()
        self.padding = (kernel_size - 1) * dilation
        self.conv1 = weight_norm(
            nn.Conv1d(in_channels, out_channels, kernel_size, dilation=dilation)
        )
        self.conv2 = weight_norm(
            nn.Conv1d(out_channels, out_channels, kernel_size, dilation=dilation)
        )
        self.activation = nn.LeakyReLU()
        self.dropout = nn.Dropout(dropout)
        self.residual = (
            nn.Conv1d(in_channels, out_channels, 1)
            if in_channels != out_channels
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (batch, channels, frames); left padding keeps every output frame causal
        y = self.dropout(self.activation(self.conv1(nn.functional.pad(x, (self.padding, 0)))))
        y = self.dropout(self.activation(self.conv2(nn.functional.pad(y, (self.padding, 0)))))
        return self.activation(y + self.residual(x))


class TemporalConvNet(nn.Module):
    """A stack of causal blocks with dilations 1, 2, 4, ...: (batch, frames, in) -> (batch, frames, out)."""

    def __init__(
        self, in_features: int, channels: int, levels: int, kernel_size: int, dropout: float
    ):
        super().__init__()
        blocks = []
        for level in range(levels):
            blocks.append(
                CausalBlock(
                    in_features if level == 0 else channels,
                    channels,
                    kernel_size,
                    2**level,
                    dropout,
                )
            )
        self.blocks = nn.Sequential(*blocks)
        self.out_features = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x.transpose(1, 2)).transpose(1, 2)


class TCNRegressor(nn.Module):
    """`tcn`: one TCN over the concatenated modalities and a linear head per frame."""

    def __init__(self, config: ModelConfig, dims: dict[str, int], n_outputs: int):
        super().__init__()
        self.modalities = list(dims)
        self.tcn = TemporalConvNet(
            sum(dims.values()), config.channels, config.levels, config.kernel_size, config.dropout
        )
        self.head = nn.Linear(config.channels, n_outputs)

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        x = torch.cat([inputs[m] for m in self.modalities], dim=-1)
        return self.head(self.tcn(x))


class LeaderFollowerAttention(nn.Module):
    """`lfan`: leader TCN, follower TCNs, per-frame cross-modal attention, fused head."""

    def __init__(self, config: ModelConfig, dims: dict[str, int], n_outputs: int, leader: str):
        super().__init__()
        self.leader = leader
        self.modalities = [leader] + [m for m in dims if m != leader]
        self.branches = nn.ModuleDict()
        for modality in self.modalities:
            width = config.channels if modality == leader else config.follower_channels
            self.branches[modality] = TemporalConvNet(
                dims[modality], width, config.levels, config.kernel_size, config.dropout
            )
        d = config.attention_dim
        self.keys = nn.ModuleDict(
            {m: nn.Linear(self.branches[m].out_features, d) for m in self.modalities}
        )
        self.queries = nn.ModuleDict(
            {m: nn.Linear(self.branches[m].out_features, d) for m in self.modalities}
        )
        self.values = nn.ModuleDict(
            {m: nn.Linear(self.branches[m].out_features, d) for m in self.modalities}
        )
        self.norm = nn.LayerNorm([len(self.modalities), d])
        self.scale = d**-0.5
        self.head = nn.Linear(config.channels + len(self.modalities) * d, n_outputs)

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        encoded = {m: self.branches[m](inputs[m]) for m in self.modalities}
        # (batch, frames, modalities, d)
        keys = torch.stack([self.keys[m](encoded[m]) for m in self.modalities], dim=2)
        queries = torch.stack([self.queries[m](encoded[m]) for m in self.modalities], dim=2)
        values = torch.stack([self.values[m](encoded[m]) for m in self.modalities], dim=2)
        weights = torch.softmax(keys @ queries.transpose(-1, -2) * self.scale, dim=-1)
        attended = self.norm(weights @ values + values).flatten(start_dim=2)
        return self.head(torch.cat([encoded[self.leader], attended], dim=-1))


class GRURegressor(nn.Module):
    """`gru`: projection, bidirectional GRU, one linear output per emotion."""

    def __init__(self, config: ModelConfig, dims: dict[str, int], n_outputs: int):
        super().__init__()
        self.modalities = list(dims)
        hidden = config.gru_hidden
        self.projection = nn.Sequential(
            nn.Linear(sum(dims.values()), hidden), nn.LeakyReLU(), nn.Dropout(config.dropout)
        )
        self.gru = nn.GRU(
            hidden,
            hidden,
            num_layers=config.gru_layers,
            batch_first=True,
            bidirectional=True,
            dropout=config.dropout if config.gru_layers > 1 else 0.0,
        )
        self.head = nn.Linear(2 * hidden, n_outputs)

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        x = torch.cat([inputs[m] for m in self.modalities], dim=-1)
        output, _ = self.gru(self.projection(x))
        return self.head(output)


def build_model(
    config: ModelConfig, dims: dict[str, int], n_outputs: int, leader: str
) -> nn.Module:
    """The model named by `config.name`, for modalities of widths `dims`."""
    if config.name == "tcn":
        return TCNRegressor(config, dims, n_outputs)
    if config.name == "lfan":
        return LeaderFollowerAttention(config, dims, n_outputs, leader)
    if config.name == "gru":
        return GRURegressor(config, dims, n_outputs)
    raise ValueError(f"unknown model {config.name!r}")
