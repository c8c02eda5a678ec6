"""Shared sidebar state: the model picker, uploads, local checkpoint, and URL mirroring.

Session-state keys (read these from any page):
  "models"          list[str]  selected model ids, in order (the multiselect's key)
  "custom_configs"  dict[str, dict]  id -> config dict for ids that are not catalog keys
  "checkpoint_path" str  resolved path of a checkpoint folder (under backend.live.roots) holding a config.json, or ""
  "variant_info"    dict[str, dict]  id -> {"base", "changes", "patches", "notes"} for variant ids
Model ids: a catalog key ("gpt2"), "custom:<file stem>" (uploaded config.json),
"local:<absolute folder path>" (config.json of a local checkpoint folder) or "variant:<name>" (a selected model
with one component changed, backend.arch.variants; its config dict is carried like an upload's).
Query params: "models" (comma-separated catalog keys); pages add their own through :func:`setting`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import streamlit as st
from streamlit.errors import StreamlitAPIException

from backend.arch import catalog
from backend.arch.architecture import arch_spec
from backend.arch.configs import MAX_CONFIG_BYTES, ModelSource, parse_config_text
from backend.arch.errors import ArchLabError
from backend.arch.variants import AXES, make_variant, parse_vary
from backend.live.runtime import resolve_checkpoint
from backend.present.colors import model_colors
from backend.present.text import md

DEFAULT_MODELS = ["gpt2", "deepseek-v3", "qwen3-30b-a3b"]
MAX_MODELS = 6
CUSTOM, LOCAL, VARIANT = "custom:", "local:", "variant:"
#: the variant picker's choice for "any other config field (key=value)"
FREE = "other field"


@dataclass(frozen=True)
class Model:
    id: str
    label: str
    source: ModelSource
    color: str


def _ss():
    return st.session_state


def label_of(model_id: str) -> str:
    """Display name of a model id."""
    if model_id.startswith(CUSTOM):
        return f"{model_id[len(CUSTOM) :]} (uploaded)"
    if model_id.startswith(LOCAL):
        return f"{Path(model_id[len(LOCAL) :]).name} (local folder)"
    if model_id.startswith(VARIANT):
        return model_id[len(VARIANT) :]
    try:
        return catalog.get(model_id).name
    except ArchLabError:
        return model_id


def _validate(config: dict) -> None:
    arch_spec(config)  # builds on the meta device: a config transformers rejects fails here, with one line


def add_config(model_id: str, data: str | bytes) -> str:
    """Parse and validate a config.json, register it under ``model_id`` and select it.

    Raises ArchLabError with a one-line message; the selection is unchanged then.
    """
    config = parse_config_text(data)
    _validate(config)
    ss = _ss()
    ss.setdefault("custom_configs", {})[model_id] = config
    selected = [m for m in ss.get("models", []) if m != model_id]
    ss["models"] = (selected + [model_id])[-MAX_MODELS:]
    return model_id


def add_upload(name: str, data: bytes) -> str | None:
    """Handle an uploaded file; on failure store the message in ``upload_error`` and return None."""
    ss = _ss()
    ss["upload_error"] = ""
    try:
        return add_config(CUSTOM + (Path(name).stem or "config"), data)
    except ArchLabError as e:
        ss["upload_error"] = f"{name}: {e}"
        return None


def use_checkpoint(path: str) -> str | None:
    """Adopt a checkpoint folder under the server's model folders (``backend.live.roots``), or a repo id in
    its Hugging Face cache: store its resolved path and add its config.json as a model. Anything outside
    those folders is refused with one line that says nothing about the path."""
    ss = _ss()
    ss["checkpoint_error"] = ""
    path = (path or "").strip()
    if not path:
        ss["checkpoint_path"] = ""
        return None
    try:
        folder = resolve_checkpoint(path, confined=True)  # checked before anything there is looked at
        config = folder / "config.json"
        if not config.is_file():
            raise ArchLabError(
                f"{folder.name} has no config.json: point at the folder that holds config.json and "
                "the *.safetensors files."
            )
        if config.stat().st_size > MAX_CONFIG_BYTES:
            raise ArchLabError(f"config.json in {folder.name} is over {MAX_CONFIG_BYTES:,} bytes")
        model_id = add_config(LOCAL + str(folder), config.read_bytes())
    except ArchLabError as e:
        ss["checkpoint_error"] = str(e)
    except OSError as e:  # unreadable inside an allowed folder
        ss["checkpoint_error"] = f"could not read config.json there ({type(e).__name__})"
    else:
        ss["checkpoint_path"] = str(folder)
        return model_id
    ss["checkpoint_path"] = ""
    return None


def add_variant(base: Model, axis: str, value: str) -> str:
    """A variant of ``base`` with ``axis`` set to ``value`` (``axis`` :data:`FREE`: ``value`` is ``key=value`` for any
    field of its config), registered and selected beside its base, the base set as the baseline ("Compare
    against"). ArchLabError with a one-line message otherwise; the selection is unchanged then."""
    value = (value or "").strip()
    if not value:
        raise ArchLabError("type a value for the variant")
    if axis == FREE:
        key, values = parse_vary(value, base.source)
        if len(values) != 1:
            raise ArchLabError(f"one value at a time, got {len(values)} for {key}")
        changes = {key: values[0]}
    elif axis in AXES:
        changes = {axis: value}
    else:
        raise ArchLabError(f"unknown component {axis!r}; choose one of {', '.join(AXES)}")
    v = make_variant(base.source, changes)
    if v.is_base:
        raise ArchLabError(f"{base.label} already has {v.label}: that variant is the model itself")
    ss = _ss()
    model_id = VARIANT + v.name
    ss.setdefault("custom_configs", {})[model_id] = v.config
    ss.setdefault("variant_info", {})[model_id] = {
        "base": base.label,
        "changes": v.label,
        "patches": list(v.patches),
        "notes": list(v.notes),
    }
    selected = [m for m in ss.get("models", []) if m != model_id] + [model_id]
    while len(selected) > MAX_MODELS:  # drop the oldest, never the base
        selected.remove(next(m for m in selected if m != base.id))
    ss["models"] = selected
    ss["base"] = ss["_w_base"] = base.id
    return model_id


def on_add_variant() -> None:
    """The variant picker's button: its choices read from the session, a refusal kept in ``variant_error``."""
    ss = _ss()
    ss["variant_error"] = ""
    base = next((m for m in selected() if m.id == ss.get("variant_base")), None)
    axis = ss.get("variant_axis", "")
    try:
        if base is None:
            raise ArchLabError("choose the model to change")
        add_variant(base, axis, ss.get(f"variant_value_{axis}", ""))
    except ArchLabError as e:
        ss["variant_error"] = str(e)


def _on_upload() -> None:
    f = _ss().get("upload")
    if f is not None:
        add_upload(f.name, f.getvalue())


def _on_checkpoint() -> None:
    use_checkpoint(_ss().get("checkpoint_input", ""))


def _restore_models() -> None:
    """First run of a session: selection from ?models=..., unknown keys reported, not fatal."""
    ss = _ss()
    if "models" in ss:
        return
    raw = st.query_params.get("models")
    if raw is None:
        ss["models"] = list(DEFAULT_MODELS)
        return
    wanted = [k.strip() for k in raw.split(",") if k.strip()]
    known = set(catalog.keys())
    bad = [k for k in wanted if k not in known]
    ss["models"] = list(dict.fromkeys(k for k in wanted if k in known))[:MAX_MODELS]
    if bad:
        ss["url_warning_for"] = list(ss["models"])
        ss["url_warning"] = (
            f"Ignored unknown model key(s) in the URL: {md(', '.join(bad))}. "
            f"Valid keys are catalog keys such as {', '.join(DEFAULT_MODELS)}."
        )


def restore_selection() -> None:
    """The selection for this run, before anything is drawn: restored from the URL on a session's first run,
    models that are gone dropped, mirrored into the URL. :func:`sidebar` draws its widgets (after the page)."""
    ss = _ss()
    ss.setdefault("custom_configs", {})
    ss.setdefault("checkpoint_path", "")
    _restore_models()
    options = catalog.keys() + list(ss["custom_configs"])
    ss["models"] = [m for m in ss["models"] if m in options]
    _mirror_models()


def sidebar() -> list[Model]:
    """Draw the shared model picker in the sidebar (after :func:`restore_selection`); return the selected models."""
    ss = _ss()
    options = catalog.keys() + list(ss["custom_configs"])
    with st.sidebar:
        st.multiselect(
            "Models to compare",
            options,
            key="models",
            format_func=label_of,
            max_selections=MAX_MODELS,
            help="Catalog models use their published config.json. "
            "Up to six at once; the order here is the order on every page.",
        )
        if ss.get("url_warning") and ss.get("url_warning_for") == ss["models"]:
            st.warning(ss["url_warning"])
        with st.expander("Add your own model"):
            st.file_uploader(
                "Upload a config.json",
                type=["json"],
                key="upload",
                on_change=_on_upload,
                help="A Hugging Face transformers config.json; nothing is downloaded or run.",
            )
            if ss.get("upload_error"):
                st.error(md(ss["upload_error"]) + " The previous selection is kept.")
            st.text_input(
                "Local checkpoint folder",
                key="checkpoint_input",
                on_change=_on_checkpoint,
                placeholder="/path/to/model (holds config.json)",
                help="A folder on the server with config.json (+ safetensors for the Playground).",
            )
            if ss.get("checkpoint_error"):
                st.error(md(ss["checkpoint_error"]))
            elif ss["checkpoint_path"]:
                st.caption(f"Using checkpoint folder {md(ss['checkpoint_path'])}")
    return selected()


def selected() -> list[Model]:
    """The models selected now (sources resolved, colours fixed per id)."""
    ss = _ss()
    ids = [m for m in ss.get("models", []) if m in ss.get("custom_configs", {}) or m in catalog.keys()]
    colors = model_colors(ids)
    return [Model(m, label_of(m), ss["custom_configs"].get(m, m), colors[m]) for m in ids]


def _mirror_models() -> None:
    keys = [m for m in _ss().get("models", []) if not m.startswith((CUSTOM, LOCAL, VARIANT))]
    st.query_params["models"] = ",".join(keys)


def restored(name: str, default: Any, parse: Callable[[str], Any] = str, url: bool = True) -> Any:
    """The value the widget of :func:`setting` ``name`` shows in this run, known before it is drawn (restored
    from ?name= on first use, as :func:`setting` does): what depends on it can be drawn first."""
    ss = _ss()
    wkey = f"_w_{name}"
    if name not in ss:
        ss[name] = default
        raw = st.query_params.get(name) if url else None
        if raw is not None:
            try:
                ss[name] = parse(raw)
            except (TypeError, ValueError):
                st.warning(f"Ignored ?{name}={md(raw)} in the URL (not a valid value); using {default}.")
    if wkey not in ss:  # Streamlit forgets a widget's state when its page is left
        ss[wkey] = ss[name]
    return ss[wkey]


def setting(
    name: str, default: Any, widget: Callable[..., Any], parse: Callable[[str], Any] = str, url: bool = True, **kwargs
) -> Any:
    """A page setting: restored from ?name= on first use, kept across pages, mirrored to the URL
    (``url=False``: kept across pages and reruns only, e.g. a long prompt).

    ``widget`` is a Streamlit input (st.number_input, st.selectbox, ...) called with ``kwargs``.
    A value in the URL that ``parse`` rejects (or the widget refuses) falls back to ``default``.
    """
    ss = _ss()
    wkey = f"_w_{name}"
    restored(name, default, parse, url)
    try:
        value = widget(key=wkey, **kwargs)
    except StreamlitAPIException:  # a URL value outside the widget's range or options
        st.warning(f"Ignored ?{name}={md(ss[name])} in the URL (out of range); using {default}.")
        ss[name] = ss[wkey] = default
        st.rerun()
    ss[name] = value
    if not url:
        return value
    if value == default:
        st.query_params.pop(name, None)
    else:
        st.query_params[name] = str(int(value) if isinstance(value, bool) else value)
    return value


def parse_bool(raw: str) -> bool:
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)


def int_in(lo: int, hi: int) -> Callable[[str], int]:
    """A URL parser for an integer in [lo, hi] (ValueError otherwise)."""

    def parse(raw: str) -> int:
        v = int(raw)
        if not lo <= v <= hi:
            raise ValueError(raw)
        return v

    return parse


def float_in(lo: float, hi: float) -> Callable[[str], float]:
    """A URL parser for a number in [lo, hi] (ValueError otherwise, nan included)."""

    def parse(raw: str) -> float:
        v = float(raw)
        if not lo <= v <= hi:  # also refuses nan
            raise ValueError(raw)
        return v

    return parse


def choice(options) -> Callable[[str], str]:
    """A URL parser for one of ``options``."""

    def parse(raw: str) -> str:
        if raw not in options:
            raise ValueError(raw)
        return raw

    return parse
