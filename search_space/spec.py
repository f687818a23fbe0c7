"""The spec: one schema for fixed architectures and search spaces.

A spec file has ``name``, ``model``, ``train`` and ``search`` sections. Any leaf of ``model`` or ``train`` may be
a choice; a spec with no choices left is an *Architecture* and compiles on its own. In a stage, ``block`` holds
the settings every block of the stage draws from (each block draws its own values); ``blocks`` lists blocks by
position and overrides ``block`` key by key.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from .config import SearchConfig, TrainConfig, check_search, check_train
from .schema import (
    Categorical,
    choices_in,
    SpecError,
    _fmt,
    check_value,
    field,
    is_choice,
    looks_like_choice,
    parse_choice,
    parse_dataclass,
    short,
    to_yaml,
)


# Limits that keep loading and validating any file fast and bounded (README "Limits").
MAX_SPEC_BYTES = 1_000_000      # a spec is a few KB; a bigger file is a mistake or an attack
MAX_YAML_NODES = 50_000         # scalars, lists and mappings in the file
MAX_YAML_DEPTH = 32             # nesting of lists and mappings (a spec needs about 8)
MAX_STAGES = 16                 # stages of a model; a stage has at most 64 blocks (stages[i].depth)
MAX_PARAMS = 1_000_000_000      # parameters of any architecture a spec may describe (ResNet-50: 25.6M)
MAX_MACS = 1_000_000_000_000    # MACs per image at input_size (ResNet-50 at 224 px: 4.1G)
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}"  # safe as a directory name: no '/', no '..', no leading dot


@dataclass
class BlockSpec:
    type: str = field("plain", doc="block type: plain, grouped, se, sk, split_attention, res2net, rexnet")
    bottleneck: bool = field(True, doc="1x1-3x3-1x1 bottleneck (true) or two 3x3 convs (basic)")
    bottleneck_ratio: float = field(0.25, min=0.01, max=8.0, doc="mid width = int(out width * ratio) (bottleneck)")
    cardinality: int = field(1, min=1, max=1024, doc="K: groups of the 3x3 (grouped, sk, split_attention, res2net)")
    radix: int = field(2, min=1, max=16, doc="R: splits of split-attention (split_attention only)")
    avd: bool = field(False, doc="split_attention: stride moves to a 3x3 avgpool after the attention (ResNeSt-D)")
    avd_first: bool = field(False, doc="split_attention with avd: the 3x3 avgpool comes before the split-attention "
                                       "conv instead of after (timm's avd_first, resnest50d_4s2x40d)")
    sk_split: bool = field(False, doc="sk: each of the two paths reads half the input channels (SKNet's split "
                                      "variant, timm's skresnet18/34) instead of all of them")
    sk_ratio: float = field(0.0625, min=0.001, max=1.0, doc="sk: attention width = make_divisible(mid * sk_ratio, "
                                                             "sk_divisor) (skresnext50: 1/16; skresnet18/34: 1/8)")
    sk_divisor: int = field(32, min=1, max=1024, doc="sk: the attention width is a multiple of this "
                                                     "(skresnext50: 32; skresnet18/34: 16)")
    scales: int = field(4, min=2, max=32, doc="s: width scales of res2net")
    attention: Literal["none", "se", "scse"] = field("none", doc="attention on the block output before the add")
    se_ratio: float = field(0.0625, min=0.001, max=1.0, doc="SE reduction: r = make_divisible(C * se_ratio, 8)")
    expansion: float = field(6.0, min=1.0, max=16.0, doc="rexnet: 1x1 expansion ratio of the inverted residual")
    se_rexnet: bool = field(True, doc="rexnet: SE (BN inside, reduction 1/12) after the depthwise conv")
    rexnet_divisor: int = field(1, min=1, max=1024, doc="rexnet: the expanded (depthwise) width and the SE width "
                                "round to multiples of this with make_divisible (rexnetr_*: 8); read only with an "
                                "expansion or SE")


@dataclass
class StemSpec:
    type: Literal["conv7", "deep", "deep_tiered", "cifar", "rexnet"] = field(
        "conv7", doc="conv7: 7x7/2 + maxpool; deep: three 3x3 (width/2, width/2, width) + maxpool; "
        "deep_tiered: three 3x3 (3 * (width/2 // 4), width/2, width) + maxpool (timm's resnet26t/50t: 24-32-64); "
        "cifar: one 3x3/1, no pool (8-64 px inputs); rexnet: 3x3/2 + SiLU")
    width: int = field(64, min=1, max=1024,
                       doc="stem output channels (with a linear `model.widths` schedule: at multiplier 1, "
                       "scaled as ReXNet does, round(width * max(multiplier, 1)))")


@dataclass
class HeadSpec:
    pool: Literal["avg", "max"] = field("avg", doc="global pooling of the last feature map")
    dropout: float = field(0.0, min=0.0, max=1.0, doc="dropout before the classifier")
    conv_width: int = field(0, min=0, max=8192,
                            doc="1x1 conv + BN + act to this width before pooling (0: none; ReXNet 1280); "
                            "with a linear `model.widths` schedule it scales: int(conv_width * multiplier + 0.5)")
    act: Literal["relu", "silu"] = field("relu", doc="activation of the head conv")


@dataclass
class StageSpec:
    depth: int = field(1, min=1, max=64, doc="number of blocks")
    width: int = field(64, min=1, max=8192, doc="output channels of every block of the stage (not written when "
                                      "`model.widths.schedule` is linear: the schedule sets every block's width)")
    stride: Literal[1, 2] = field(1, doc="stride of the first block")
    block: BlockSpec = field(default_factory=BlockSpec, doc="settings each block draws from")
    blocks: Optional[list[BlockSpec]] = field(None, doc="per-position blocks; override `block` key by key")


@dataclass
class WidthSpec:
    """How output widths are assigned: per stage (ResNet family) or by ReXNet's linear schedule over all blocks."""

    schedule: Literal["stage", "linear"] = field(
        "stage", doc="stage: every block has its stage's `width`; linear: block widths grow linearly over all the "
        "network's blocks (ReXNet) and stages leave `width` out")
    start: int = field(16, min=1, max=1024, doc="linear: width of the first block at multiplier 1 (ReXNet: 16)")
    growth: float = field(180.0, min=0.0, max=8192.0,
                          doc="linear: channels added over all n blocks at multiplier 1, block i "
                          "(0-based) gets start + i * growth / n (ReXNet: 180, so widths 16..185 over 16 blocks)")
    multiplier: float = field(1.0, min=0.1, max=10.0, doc="linear: width multiplier, width_i = round((start + i * "
                              "growth / n) * multiplier) with Python's round (half to even); below 1 the start is "
                              "kept and only the growth shrinks (as in ReXNet); stem and head widths scale too")
    divisor: int = field(1, min=1, max=1024, doc="linear: block, stem and head widths round to multiples of this "
                         "with make_divisible (never below 90% of the unrounded width; ReXNet: 1, rexnetr_*: 8)")

    def block_widths(self, n: int) -> list[int]:
        """Output widths of ``n`` blocks, computed the way ReXNet's reference ``_block_cfg`` does."""
        from .blocks.layers import make_divisible

        m = self.multiplier
        base = self.start / m if m < 1.0 else self.start
        out = []
        for _ in range(n):
            out.append(make_divisible(round(base * m), self.divisor))
            base += self.growth / (n * 1.0)
        return out

    def stem_width(self, width: int) -> int:
        from .blocks.layers import make_divisible

        m = self.multiplier
        return make_divisible(round((width / m if m < 1.0 else width) * m), self.divisor)

    def head_width(self, width: int) -> int:
        from .blocks.layers import make_divisible

        return make_divisible(width * self.multiplier, self.divisor) if width else 0


@dataclass
class ModelSpec:
    in_channels: Optional[int] = field(None, min=1, max=1024,
                                       doc="input channels; null: from the dataset (3 for compile)")
    num_classes: Optional[int] = field(None, min=1, max=100_000,
                                       doc="classes; null: from the dataset (1000 for compile)")
    input_size: int = field(224, min=1, max=1024, doc="input height = width the cost model, budgets and checks use")
    stem: StemSpec = field(default_factory=StemSpec, doc="the stem")
    widths: WidthSpec = field(default_factory=WidthSpec, doc="where block widths come from: each stage's `width` "
                              "(default) or a linear schedule over all blocks (ReXNet)")
    downsample: Literal["conv", "avg"] = field("conv", doc="shortcut when shape changes: 1x1 conv+BN, or "
                                               "avgpool+1x1 conv+BN (ResNet-D)")
    zero_init_last: bool = field(True, doc="zero-init the last BN gamma of each residual block (not SK)")
    stages: list[StageSpec] = field(default_factory=list, required=True,
                                    doc="the stages, in order (1 to 16; a stage lists at most 64 blocks)")
    head: HeadSpec = field(default_factory=HeadSpec, doc="the classifier head")


@dataclass
class Spec:
    name: str = field("spec", fixed=True, pattern=NAME_PATTERN,
                      doc="name of the spec: the run directory runs/<name>/ and the study name, so letters, digits, "
                      "'_', '.', '-', starting with a letter or digit, at most 100 characters")
    model: ModelSpec = field(default_factory=ModelSpec, required=True, doc="the network")
    train: TrainConfig = field(default_factory=TrainConfig, doc="the proxy training recipe")
    search: SearchConfig = field(default_factory=SearchConfig, doc="the search")

    def is_fixed(self) -> bool:
        """True when no choice is left: the spec is one architecture."""
        return not choices_in(self)

    def to_yaml(self) -> str:
        return dump_spec(self)


# Architecture is a fixed ModelSpec: the same schema with no choices left.
Architecture = ModelSpec


# ----------------------------------------------------------------------------------------------------------------
# Parsing
# ----------------------------------------------------------------------------------------------------------------


def _parse_block(raw: Any, path: str, allow_choices: bool, check_keys: bool = True) -> tuple[BlockSpec, set]:
    from .blocks import block_type_names, get_block_type, relevant_fields

    def parse_type(value, p):
        names = block_type_names()
        check = lambda v, pp: check_value(v, Literal[tuple(names)], pp)  # noqa: E731
        if looks_like_choice(value):
            if not allow_choices:
                raise SpecError(p, "a choice is not allowed here (this must be a fixed value)")
            choice = parse_choice(value, p, check)
            if not isinstance(choice, Categorical):
                raise SpecError(p, "block type choices are written {choice: [...]}")
            return choice
        return check(value, p)

    block = parse_dataclass(BlockSpec, raw, path, allow_choices, special={"type": parse_type})
    given = set(raw or {})
    if not check_keys:
        return block, given
    # A key no possible type reads is a mistake (radix on a plain block, scales on sk ...).
    types_ = block.type.options if is_choice(block.type) else (block.type,)
    for key in sorted(given - {"type"}):
        if not any(key in get_block_type(t).uses for t in types_):
            users = [n for n in block_type_names() if key in get_block_type(n).uses]
            raise SpecError(f"{path}.{key}", f"does not apply to block type {', '.join(map(repr, types_))}; "
                                             f"it is used by: {', '.join(users)}")
    if not is_choice(block.type):
        # Keys a fixed type ignores under the values given (bottleneck_ratio of a basic block ...).
        relevant = relevant_fields(block)
        for key in sorted(given - {"type"}):
            if key not in relevant and not is_choice(getattr(block, key)) and not any(
                    is_choice(getattr(block, k)) for k in get_block_type(block.type).deciders):
                raise SpecError(f"{path}.{key}", f"is ignored by this block as written (type {block.type!r}); "
                                                 f"remove it or set the keys it depends on")
    return block, given


def _parse_stage(raw: Any, path: str, allow_choices: bool) -> StageSpec:
    if not isinstance(raw, dict):
        raise SpecError(path, f"{_fmt(raw)} is not a mapping; a stage has depth, width, stride, block, blocks")
    template = [None]
    raw = dict(raw)
    raw_blocks = raw.pop("blocks", None)

    def parse_block(value, p):
        # With a per-position list the template's keys are checked where they land, in each listed block.
        template[0] = _parse_block(value, p, allow_choices, check_keys=raw_blocks is None)[0]
        return template[0]

    stage = parse_dataclass(StageSpec, raw, path, allow_choices, special={"block": parse_block})
    if template[0] is None:
        template[0] = _parse_block({}, f"{path}.block", allow_choices)[0]
    if raw_blocks is not None:
        if not isinstance(raw_blocks, list) or not raw_blocks:
            raise SpecError(f"{path}.blocks", f"{_fmt(raw_blocks)} is not a non-empty list of blocks")
        most = next(f.metadata["max"] for f in dataclasses.fields(StageSpec) if f.name == "depth")
        if len(raw_blocks) > most:
            raise SpecError(f"{path}.blocks", f"{len(raw_blocks)} blocks; a stage may have at most {most}")
        base = raw.get("block") if isinstance(raw.get("block"), dict) else {}
        try:
            blocks = [_parse_block({**base, **b} if isinstance(b, dict) else b, f"{path}.blocks.{i}",
                                   allow_choices)[0] for i, b in enumerate(raw_blocks)]
        except SpecError as e:  # a template key that does not apply to a listed block: name the template's key
            raise _in_template(e, {**raw, "blocks": raw_blocks}) from None
        if "depth" in raw and (is_choice(stage.depth) or stage.depth != len(blocks)):
            raise SpecError(f"{path}.depth", f"{_fmt(raw['depth'])} disagrees with the {len(blocks)} blocks listed; "
                                             f"leave depth out when blocks are listed")
        stage = dataclasses.replace(stage, depth=len(blocks), blocks=blocks)
    return canonical_stage(dataclasses.replace(stage, block=template[0]))


def canonical_block(block: BlockSpec) -> BlockSpec:
    """Reset the fields the block's type does not read to their defaults, so equal blocks compare equal."""
    from .blocks import get_block_type, relevant_fields

    if is_choice(block.type):
        return block
    keep = relevant_fields(block)
    if any(is_choice(getattr(block, k)) for k in keep & set(get_block_type(block.type).deciders)):
        return block  # which fields matter is not settled yet
    defaults = BlockSpec()
    return dataclasses.replace(block, **{f.name: getattr(defaults, f.name) for f in dataclasses.fields(block)
                                         if f.name not in keep})


def canonical_stage(stage: StageSpec) -> StageSpec:
    """A stage with no choices lists its blocks by position (the form an Architecture has)."""
    if is_choice(stage.depth):
        return stage
    blocks = stage.blocks if stage.blocks is not None else [stage.block] * stage.depth
    blocks = [canonical_block(b) for b in blocks]
    candidate = dataclasses.replace(stage, blocks=blocks, block=BlockSpec())
    if choices_in(candidate):
        return stage
    return candidate


def _parse_model(raw: Any, path: str, allow_choices: bool) -> ModelSpec:
    def parse_stages(value, p):
        if not isinstance(value, list) or not value:
            raise SpecError(p, f"{_fmt(value)} is not a non-empty list of stages")
        if len(value) > MAX_STAGES:
            raise SpecError(p, f"{len(value)} stages; a model may have at most {MAX_STAGES}")
        return [_parse_stage(s, f"{p}.{i}", allow_choices) for i, s in enumerate(value)]

    if not isinstance(raw, dict):
        raise SpecError(path, f"{_fmt(raw)} is not a mapping; the model needs at least a 'stages' list")
    model = parse_dataclass(ModelSpec, raw, path, allow_choices, special={"stages": parse_stages})
    _check_widths(model, raw, path)
    return model


def _check_widths(model: ModelSpec, raw: dict, path: str) -> None:
    """The width schedule is fixed; its keys need schedule linear, and then stages leave `width` out."""
    given = raw.get("widths") or {}
    schedule = model.widths.schedule
    if is_choice(schedule):
        raise SpecError(f"{path}.widths.schedule", "must be a fixed value (stage or linear), not a choice")
    if schedule == "stage":
        for key in given:
            if key != "schedule":
                raise SpecError(f"{path}.widths.{key}", "applies only with schedule: linear (the default 'stage' "
                                                       "takes each stage's width)")
        return
    for i, stage in enumerate(raw["stages"]):
        if "width" in stage:
            raise SpecError(f"{path}.stages.{i}.width", "is set by the linear width schedule (model.widths); "
                                                       "remove it, or use widths: {schedule: stage}")


def _in_file(e: SpecError, data: Any) -> SpecError:
    """``e`` reported where the file sets the key (see :func:`_in_template`)."""
    parts = e.path.split(".")
    if len(parts) < 3 or parts[:2] != ["model", "stages"] or not parts[2].isdigit():
        return e
    try:
        return _in_template(e, data["model"]["stages"][int(parts[2])])
    except (KeyError, IndexError, TypeError):
        return e


def _in_template(e: SpecError, raw_stage: Any) -> SpecError:
    """An error found in block J of a stage written with a ``block:`` template names
    ``model.stages.N.block.<key>`` (the path in the file), unless ``blocks:`` sets that key for block J, or the
    stage lists its blocks and the key is a default (then ``blocks.J.<key>`` is where to write it)."""
    parts = e.path.split(".")
    if len(parts) < 6 or parts[3] != "blocks" or not parts[4].isdigit() or not isinstance(raw_stage, dict):
        return e
    j, key = int(parts[4]), parts[5]
    listed, template = raw_stage.get("blocks"), raw_stage.get("block")
    entry = listed[j] if isinstance(listed, list) and j < len(listed) else None
    if (isinstance(entry, dict) and key in entry) or (listed is not None and not (
            isinstance(template, dict) and key in template)):
        return e
    where = f" (in block {j} of the stage)" if j or listed is not None else ""
    return type(e)(".".join(parts[:3] + ["block"] + parts[5:]), e.message + where)


def check_limits(cost, path: str = "model") -> None:
    """Refuse an architecture bigger than any spec may describe (MAX_PARAMS, MAX_MACS), before it is built."""
    for what, value, limit in (("parameters", cost.params, MAX_PARAMS), ("MACs per image", cost.macs, MAX_MACS)):
        if value > limit:
            raise SpecError(path, f"{value:,} {what} is more than the {limit:,} a spec may describe; use smaller "
                                  f"widths, depths, input_size, image_size or expansion")


def check_architecture_limits(spec: Spec) -> None:
    """:func:`check_limits` for a fixed spec, at its input size and at the size it trains at (train.image_size),
    which may be far larger."""
    from .cost import architecture_cost

    check_limits(architecture_cost(spec.model))
    size = spec.train.image_size
    if isinstance(size, int) and size != spec.model.input_size:
        check_limits(architecture_cost(spec.model, input_size=size), "train.image_size")


def looks_like_spec(data: dict) -> bool:
    """Whether a mapping is meant as a spec: one of its top-level keys is a spec key or a near miss of one (a typo
    such as ``trian`` still gets its "did you mean"). Errors about anything else would echo the keys and values
    of a file that may hold secrets (a path given by mistake: ``.env``, credentials, a JSON config)."""
    allowed = [f.name for f in dataclasses.fields(Spec)]
    return any(isinstance(k, str) and (k in allowed or difflib.get_close_matches(k[:100], allowed, n=1))
               for k in list(data)[:1000])


def parse_spec(data: Any, source: str = "spec") -> Spec:
    """Validate plain YAML data into a :class:`Spec` (a search space, or an architecture if no choices)."""
    if not isinstance(data, dict):
        raise SpecError("", f"{source}: the top level must be a mapping with name, model, train, search")
    if not looks_like_spec(data):  # a .env, a JSON config, a key file ...: never echo a key or value of it
        raise SpecError("", f"{source}: not a spec: none of its {len(data)} top-level key(s) is name, model, train "
                            f"or search (its content is not shown)")

    def parse_search(value, p):
        return parse_dataclass(SearchConfig, value, p, allow_choices=False)

    try:
        spec = parse_dataclass(Spec, data, "", allow_choices=True, special={
            "model": lambda v, p: _parse_model(v, p, True),
            "search": parse_search,
        })
        check_train(spec.train)
        if spec.is_fixed():
            check_architecture_limits(spec)  # raises SpecError naming the field of an impossible combination
    except SpecError as e:
        raise _in_file(e, data) from None
    return spec


def load_spec(source: str | Path) -> Spec:
    """Load a spec from a YAML file path (or YAML text containing a newline).

    The file is read with :class:`SpecLoader` (``yaml.safe_load``'s rules plus limits), validated, and its
    ``search`` section checked as ``search run`` would (:func:`search_space.config.check_search`), so ``search
    validate`` accepts exactly what ``search run`` accepts. Warm-start paths are made absolute (relative to the
    spec), so a dumped copy of the spec still finds them.
    """
    text, name = _read(source)
    try:
        data = yaml.load(text, Loader=SpecLoader)  # SpecLoader is a SafeLoader
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        kind = "YAML error" if isinstance(e, yaml.constructor.ConstructorError) else "YAML syntax error"
        raise SpecError("", f"{name}: {kind}{where}: {problem}") from None
    spec = parse_spec(data, name)
    if isinstance(source, (str, Path)) and "\n" not in str(source):
        spec.search = dataclasses.replace(spec.search, warm_start=[
            os.path.abspath(Path(source).parent / p) if not Path(p).is_absolute() else p
            for p in spec.search.warm_start])
    check_search(spec.search)
    return spec


class SpecLoader(yaml.SafeLoader):
    """``yaml.safe_load``'s loader with the limits a spec needs: no aliases (``*name``; an alias bomb expands
    to gigabytes, and a stage's ``block:`` template already shares settings), at most MAX_YAML_NODES nodes nested
    at most MAX_YAML_DEPTH deep (no RecursionError), and no duplicate key (YAML would keep the last silently).
    Errors are SpecErrors naming the path in the file."""

    def __init__(self, stream):
        super().__init__(stream)
        self._path: list[str] = []
        self._nodes = 0
        self._spec_keys = False  # a top-level spec key was seen: the file is meant as a spec, paths may be named

    def _where(self) -> str:
        top = [p for p in self._path[:2] if p]
        if top and not self._spec_keys and not looks_like_spec({top[0]: None}):
            return "(a key that is no spec key)"  # a file given by mistake: its keys are not echoed
        return ".".join(p for p in self._path if p)

    def _error(self, message: str, mark) -> SpecError:
        return SpecError(self._where(), f"{message} (line {mark.line + 1}, column {mark.column + 1})")

    def compose_node(self, parent, index):
        if isinstance(index, int):
            self._path.append(str(index))
        else:
            self._path.append(short(str(index.value)) if isinstance(index, yaml.ScalarNode) else
                              ("?" if index is not None else ""))
        if len(self._path) == 2 and not self._spec_keys and looks_like_spec({self._path[1]: None}):
            self._spec_keys = True
        try:
            event = self.peek_event()
            if isinstance(event, yaml.AliasEvent):
                raise self._error(f"YAML aliases (*{short(str(event.anchor))}) are not allowed in a spec; write the "
                                  f"value out (a stage's block: template shares settings between blocks)",
                                  event.start_mark)
            self._nodes += 1
            if self._nodes > MAX_YAML_NODES:
                raise self._error(f"more than {MAX_YAML_NODES:,} YAML values; a spec needs far fewer", event.start_mark)
            if len(self._path) > MAX_YAML_DEPTH:
                raise self._error(f"nested more than {MAX_YAML_DEPTH} levels deep; a spec needs about 8",
                                  event.start_mark)
            return super().compose_node(parent, index)
        finally:
            self._path.pop()

    def compose_mapping_node(self, anchor):
        node = super().compose_mapping_node(anchor)
        seen: dict[tuple, int] = {}
        for key, _ in node.value:
            if not isinstance(key, yaml.ScalarNode):
                continue
            if key.tag == "tag:yaml.org,2002:merge":  # `<<:` would merge silently over keys written out
                self._path.append("<<")
                raise self._error("YAML merge keys (<<) are not allowed in a spec; write the values out (a stage's "
                                  "block: template shares settings between blocks)", key.start_mark)
            ident = (key.tag, key.value)
            if ident in seen:
                self._path.append(short(str(key.value)))
                raise self._error(f"duplicate key (first at line {seen[ident]}); YAML would silently keep only the "
                                  f"last one", key.start_mark)
            seen[ident] = key.start_mark.line + 1
        return node

    def construct_yaml_int(self, node):
        """An integer of at most 100 digits: Python refuses to convert longer ones to text (a ValueError, not a
        YAML error), and no spec value needs them."""
        digits = len(node.value.lstrip("+-").replace("_", ""))
        if digits > 100:
            raise yaml.constructor.ConstructorError(None, None, f"an integer of {digits:,} digits; a spec number "
                                                                f"has at most 100", node.start_mark)
        return super().construct_yaml_int(node)


SpecLoader.add_constructor("tag:yaml.org,2002:int", SpecLoader.construct_yaml_int)


def _read(source: str | Path) -> tuple[str, str]:
    """The text of a spec: a regular file of at most MAX_SPEC_BYTES, checked with ``stat`` before it is opened
    (and opened non-blocking), so ``/dev/zero`` or a FIFO is refused at once instead of read forever."""
    if isinstance(source, str) and "\n" in source:
        if len(source) > MAX_SPEC_BYTES:
            raise SpecError("", f"<text>: {len(source):,} characters; a spec may have at most {MAX_SPEC_BYTES:,}")
        return source, "<text>"
    path = Path(source)
    try:
        info = path.stat()
    except FileNotFoundError:
        raise SpecError("", f"{path}: no such file") from None
    except OSError as e:
        raise SpecError("", f"{path}: cannot read ({e.strerror or e})") from None
    if stat.S_ISDIR(info.st_mode):
        raise SpecError("", f"{path}: is a directory, expected a YAML spec file")
    if not stat.S_ISREG(info.st_mode):
        raise SpecError("", f"{path}: is not a regular file (a device, FIFO or socket); expected a YAML spec file")
    if info.st_size > MAX_SPEC_BYTES:
        raise SpecError("", f"{path}: {info.st_size:,} bytes; a spec may have at most {MAX_SPEC_BYTES:,}")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):  # replaced between stat and open
                raise SpecError("", f"{path}: is not a regular file; expected a YAML spec file")
            data = f.read(MAX_SPEC_BYTES + 1)
    except OSError as e:
        raise SpecError("", f"{path}: cannot read ({e.strerror or e})") from None
    if len(data) > MAX_SPEC_BYTES:
        raise SpecError("", f"{path}: more than {MAX_SPEC_BYTES:,} bytes; a spec may have at most that")
    try:
        return data.decode("utf-8"), str(path)
    except UnicodeDecodeError as e:
        raise SpecError("", f"{path}: not UTF-8 text (byte {e.start}: {e.reason})") from None

# ----------------------------------------------------------------------------------------------------------------
# Dumping
# ----------------------------------------------------------------------------------------------------------------


def block_to_yaml(block: BlockSpec) -> dict:
    """Only the keys the block's type reads, and only where they differ from the defaults."""
    from .blocks import relevant_fields

    out: dict[str, Any] = {"type": to_yaml(block.type)}
    defaults = BlockSpec()
    keep = relevant_fields(block) if not is_choice(block.type) else {f.name for f in dataclasses.fields(block)}
    for f in dataclasses.fields(block):
        v = getattr(block, f.name)
        if f.name == "type" or f.name not in keep:
            continue
        if is_choice(v) or v != getattr(defaults, f.name):
            out[f.name] = to_yaml(v)
    return out


def model_to_yaml(model: ModelSpec) -> dict:
    out = to_yaml(model)
    scheduled = model.widths.schedule != "stage"
    if not scheduled:
        del out["widths"]
    out["stages"] = []
    for stage in model.stages:
        s: dict[str, Any] = {"depth": to_yaml(stage.depth), "width": to_yaml(stage.width),
                             "stride": to_yaml(stage.stride)}
        if scheduled:
            del s["width"]
        if stage.blocks is not None and all(b == stage.blocks[0] for b in stage.blocks) and not choices_in(stage):
            s["block"] = block_to_yaml(stage.blocks[0])
        elif stage.blocks is not None:
            del s["depth"]
            s["blocks"] = [block_to_yaml(b) for b in stage.blocks]
        else:
            s["block"] = block_to_yaml(stage.block)
        out["stages"].append(s)
    for key in ("in_channels", "num_classes"):
        if out[key] is None:
            del out[key]
    return out


def spec_to_data(spec: Spec) -> dict:
    return {"name": spec.name, "model": model_to_yaml(spec.model),
            "train": to_yaml(spec.train, skip_defaults=True), "search": to_yaml(spec.search, skip_defaults=True)}


def dump_spec(spec: Spec) -> str:
    """YAML text for a spec; an architecture dumps to a file that loads back equal."""
    return yaml.safe_dump(spec_to_data(spec), sort_keys=False, default_flow_style=None, width=110)

