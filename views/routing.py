"""Routing: which experts each token goes to, layer by layer, live while the Playground generates."""

from __future__ import annotations

import streamlit as st

from backend.live import routing
from backend.present import charts, playground
from backend.present import specialisation as sp
from backend.present import specialisation_charts as spc
from backend.present.playground import LiveRun, SlotRouting
from backend.present.text import md
from views import _live, _state, _ui
from views._state import choice, setting

LAST = (32, 64, 128, 256, 0)
VIEWS = {"run": "The last Playground run, live", "learned": "What the trained routers learned"}
TOP_N = 8
SHARE_TOKENS = 24
PCT = st.column_config.NumberColumn(format="%.1f")
DEC3 = st.column_config.NumberColumn(format="%.3f")
BALANCE_NAMES = {"cv": "CV", "max_over_mean": "max / mean", "entropy": "normalized entropy"}

NO_ROUTER = (
    "**{label}** is a dense model: it has no router. Every token runs the same feed-forward "
    "block in every layer, so there is no expert choice to show."
)


def _no_run() -> None:
    models = _state.selected()
    if not _ui.need_models(models):
        return
    for m in models:
        if playground.is_dense(m.source):
            st.info(NO_ROUTER.format(label=md(m.label)), icon=":material/block:")
    if any(not playground.is_dense(m.source) for m in models):
        st.info(
            "Routing is recorded while a mixture-of-experts model generates. Run a prompt in the "
            "Playground; this page then follows it token by token. What the trained miniatures' routers "
            "learned is under **Show → What the trained routers learned** above.",
            icon=":material/info:",
        )
        st.page_link("views/playground.py", label="Open the Playground", icon=":material/chat:")


def _pick(options: list, key: str, **kwargs):
    """A widget whose remembered value is dropped when it is no longer an option."""
    if st.session_state.get(key) not in options:
        st.session_state.pop(key, None)
    return (
        st.radio(options=options, key=key, horizontal=True, **kwargs)
        if len(options) < 5
        else st.selectbox(options=options, key=key, **kwargs)
    )


def _show(fig, name: str, caption: str, tick: int | None) -> None:
    """Static: chart with exports. Live (``tick`` set): chart only, with a key unique to this redraw."""
    if tick is None:
        _ui.chart(fig, name, caption)
    else:
        st.plotly_chart(fig, width="stretch", config=_ui.PLOTLY_CONFIG, key=f"live_{tick}_{_ui._slug(name)}")
        st.caption(caption + " Download buttons appear when the run ends.")


def _charts(r: SlotRouting, layer: int, last: int, tick: int | None) -> None:
    """Every routing chart of one model, at one selected layer; text charts show the ``last`` tokens."""
    t, E, w = r.trace, r.trace.num_experts, playground.window(r, last)
    st.caption(
        f"{E} routed experts, top-{t.top_k} per token, MoE layers {', '.join(map(str, t.moe_layers))}; "
        f"{len(r.tokens)} tokens routed ({r.prompt_tokens} of the prompt)."
    )
    _show(
        charts.routing_heatmap(
            w.experts,
            w.tokens,
            t.moe_layers,
            E,
            r.prompt_tokens,
            f"{r.label}: top-1 expert of each token in each MoE layer",
            first=w.first,
        ),
        f"routing heatmap {r.label}",
        "Each cell is one token in one layer, coloured by the expert with the largest routing weight; hover "
        "for all chosen experts and their weights. The dotted line separates the prompt from generated tokens "
        "(the last generated token is not routed: it is never fed back).",
        tick,
    )
    left, right = st.columns(2)
    load = routing.expert_load(t)[t.moe_layers.index(layer)]
    with left:
        _show(
            charts.expert_load_bar(load, layer, E, f"Expert load, layer {layer}"),
            f"expert load {r.label}",
            "Times each expert was picked (each token picks top-k). The dashed line is a perfectly balanced load.",
            tick,
        )
    with right:
        _show(
            charts.coselection_heatmap(routing.coselection(t, layer), layer, f"Experts chosen together, layer {layer}"),
            f"coselection {r.label}",
            "Tokens that picked both experts; the diagonal counts each expert's picks.",
            tick,
        )
    _show(
        charts.token_expert_grid(
            w.experts,
            w.tokens,
            layer,
            E,
            r.prompt_tokens,
            f"The text coloured by its top-1 expert in layer {layer}",
            first=w.first,
        ),
        f"tokens by expert {r.label}",
        "Prompt and generated text, token by token (␣ is a space, ⏎ a newline); same colours as the heatmap.",
        tick,
    )
    _show(
        charts.balance_lines(routing.balance_over_time(t), "Load balance of the tokens so far"),
        f"balance over time {r.label}",
        "After each step, over all tokens routed so far, per MoE layer: coefficient of variation and max/mean "
        "(0 and 1 when balanced) and normalized entropy (1 when every expert is picked equally). Step 0 is "
        "the whole prompt.",
        tick,
    )


def _shared(live: LiveRun) -> None:
    df = playground.shared_table(live)
    if df.empty:
        return
    st.subheader("Shared vs routed experts")
    colors = {playground.display_label(live, i): s.color for i, s in enumerate(live.slots)}
    _ui.chart(
        charts.shared_routed_bar(df, colors, "Per-token expert compute: shared vs routed"),
        "shared vs routed",
        "Shared experts run for every token; routed experts only for the top-k a "
        "router picks. Share of the expert FFN width one token runs (the miniature keeps the full "
        "model's ratio). 0 % shared: the model has no shared expert.",
    )
    _ui.frame(df, "shared vs routed", hide_index=True, width="stretch")


def _page(live: LiveRun) -> None:
    _live.show_link(live, "routing")
    if _live.current_id():
        st.page_link(
            "views/playground.py",
            label="This run in the Playground",
            icon=":material/chat:",
            query_params={_live.PARAM: _live.current_id()},
        )
    for i, s in enumerate(live.slots):
        if not s.moe:
            st.info(NO_ROUTER.format(label=md(playground.display_label(live, i))), icon=":material/block:")
    moe = [i for i, s in enumerate(live.slots) if s.moe]
    if not moe:
        st.caption(
            "The last Playground run had no mixture-of-experts model. Select one (e.g. DeepSeek V3, "
            "Qwen3 30B-A3B) and run it."
        )
        return
    slot = _pick(moe, "rt_slot", label="Model", format_func=lambda i: playground.display_label(live, i))
    failed = live.run.stats(slot)["error"]
    if failed:
        st.error(md(f"{live.run.stats(slot)['model']} failed: {failed}"))
        return
    with st.spinner(f"Waiting for {md(live.run.stats(slot)['model'])} to load…"):
        _live.wait_until(live, lambda: live.run.routing(slot) is not None and live.run.routing(slot).steps)
    if live.run.routing(slot) is None:
        st.warning("No routing was recorded for this model.")
        return
    layers = live.run.routing(slot).moe_layers
    left, right = st.columns([3, 1])
    with left:
        layer = _pick(
            layers,
            "rt_layer",
            label="Layer for the load, co-selection and text charts",
            format_func=lambda n: f"layer {n}",
        )
    with right:
        last = setting(
            "rtlast",
            64,
            st.selectbox,
            _state.int_in(0, 256),
            label="Tokens in the heatmap and text",
            options=LAST,
            format_func=lambda n: f"last {n}" if n else "all",
            help="The heatmap and the coloured text show the most recent tokens; load, balance and "
            "co-selection always count every token.",
        )
    if not live.done:
        st.caption(":material/sync: Live: following the run; charts refresh every second.")
    holder = st.empty()
    ticks = iter(range(1, 1 << 30))

    def redraw() -> None:
        with holder.container():
            _charts(playground.slot_routing(live, slot), layer, last, next(ticks))

    if live.done:
        with holder.container():
            _charts(playground.slot_routing(live, slot), layer, last, None)
        _table(live, slot)
        _shared(live)
        return
    redraw()
    _live.follow(live, redraw, every_s=1.0)


def _table(live: LiveRun, slot: int) -> None:
    r = playground.slot_routing(live, slot)
    df = r.experts.assign(token=[r.tokens[p] for p in r.experts["position"]])
    _ui.frame(
        df,
        f"routing table {r.label}",
        hide_index=True,
        width="stretch",
        height=260,
        caption="Every routing decision: position, token, MoE layer, rank among the top-k, expert, weight.",
    )


# ----------------------------------------------------------------- what the trained routers learned


@st.cache_data(show_spinner=False, max_entries=64)
def _spec_table(keys: tuple[str, ...], version: str):
    return sp.specialisation_table(list(keys))


@st.cache_data(show_spinner=False, max_entries=256)
def _top_tokens(key: str, layer: int, version: str):
    return sp.top_tokens_table(key, layer, sp.TRAINED, TOP_N)


@st.cache_data(show_spinner=False, max_entries=256)
def _shares(key: str, layer: int, version: str):
    return sp.shares(key, layer, SHARE_TOKENS)


@st.cache_data(show_spinner=False, max_entries=16)
def _balance(version: str):
    return sp.balance_table()


def _ensure(keys: list[str]) -> None:
    """Route the text through every trained and untrained model of ``keys`` not cached yet, with a progress bar
    (each is run once and kept on disk under the runs folder)."""
    todo = [(k, w) for k in keys for w in (sp.TRAINED, sp.UNTRAINED) if not sp.is_cached(k, w)]
    if not todo:
        return
    bar = st.progress(0.0, text="Routing the corpus text…")
    for n, (key, which) in enumerate(todo):
        label = sp.zoo_model(key).label
        bar.progress(
            n / len(todo),
            text=f"Routing {sp.routing_text().size:,} corpus tokens through the {which} "
            f"{md(label)} miniature ({n + 1} of {len(todo)}; once, then kept on disk)…",
        )
        sp.routing_of(key, which)
    bar.empty()


def _learned() -> None:
    """The zoo's trained MoE miniatures: per-expert tokens, specialisation beside untrained, balance by router."""
    with st.spinner("Reading the trained zoo and the held-out corpus text…"):
        models, text = sp.zoo_moe(), sp.routing_text()
    if not models:
        st.warning(
            "No trained zoo with a mixture-of-experts model is shipped here (assets/zoo); rebuild it with "
            "python -m backend train --zoo.",
            icon=":material/block:",
        )
        return
    version = sp.zoo_version()
    keys = [m.key for m in models]
    label = {m.key: m.label for m in models}
    st.caption(
        f"Each trained MoE miniature of the zoo and its **untrained twin** (the same config with the "
        f"weights its training started from: the trainer's initialisation at seed {sp.untrained_seed()}) read "
        f"the same text, {sp.describe_text(text)}; every router's choice at every position is kept."
    )
    key = setting(
        "rtzoo",
        keys[0],
        st.selectbox,
        choice(keys),
        label="Trained miniature",
        options=keys,
        format_func=label.get,
        help="The zoo's mixture-of-experts miniatures (catalog architectures whose "
        "miniatures came out identical share one).",
    )
    model = next(m for m in models if m.key == key)
    st.markdown(
        f"{model.num_experts} routed experts, top-{model.top_k}; routers trained with "
        f"**{model.router}**" + (f" (coefficient {model.aux_coef:g})" if model.aux_coef else "") + "."
    )
    _ensure([key])
    table = _spec_table((key,), version)
    st.subheader("Does the token decide the expert?")
    _ui.chart(
        spc.specialisation_by_layer(table, f"{model.label}: specialisation per MoE layer, trained vs untrained"),
        f"specialisation {key}",
        "Specialisation = (I(token; expert) − chance) ÷ log2 E. I is the plug-in mutual information in "
        "bits between the token id at a position and the router's first choice there, from the joint "
        "counts over the text; chance is the same estimate with the experts shuffled across positions "
        "(mean of 5 fixed-seed shuffles), which removes the estimator's upward bias from rare tokens; "
        "log2 E (E experts) is the most a choice can carry. 0: the token says nothing about the expert; "
        "1: the token decides it and the experts are used evenly. The table has H(expert), the entropy "
        "of the first choice (near 0: the router sends nearly every token to one expert).",
    )
    _ui.frame(
        table.drop(columns=["key"]),
        f"specialisation {key}",
        hide_index=True,
        width="stretch",
        column_config={c: DEC3 for c in table.columns if "bits" in c or c == "specialisation"},
    )
    layer = _pick(list(model.layers), "rt_zlayer", label="MoE layer", format_func=lambda n: f"layer {n}")
    st.subheader("The tokens each expert takes")
    shown, long = _top_tokens(key, layer, version)
    _ui.frame(
        shown,
        f"expert tokens {key} layer {layer}",
        csv=long,
        hide_index=True,
        width="stretch",
        column_config={
            "load (%)": PCT,
            "selections": st.column_config.NumberColumn(format="%,d"),
            "tokens it takes most (count, % of that token)": st.column_config.TextColumn(width="large"),
        },
        caption=f"Trained {md(model.label)}, layer {layer}: per expert, how often it was chosen (any of the "
        f"top-{model.top_k}) and the {TOP_N} tokens it took most, each with its count and the share of that "
        "token's occurrences in the text that went to this expert (␣ is a space, ⏎ a newline). The CSV "
        "has one row per expert and token.",
    )
    _ui.chart(
        spc.expert_given_token(
            _shares(key, layer, version), layer, f"Where the {SHARE_TOKENS} most frequent tokens go, layer {layer}"
        ),
        f"expert given token {key} layer {layer}",
        "Each row is one of the text's most frequent tokens; each cell the share of its occurrences whose "
        "first-choice expert was that column. A router that learned a token sends it to one expert (one dark "
        "cell); context-driven or untrained routing spreads it.",
    )
    st.subheader("Across the zoo: specialisation and load balance by router kind")
    missing = sum(not sp.is_cached(k, w) for k in keys for w in (sp.TRAINED, sp.UNTRAINED))
    if missing and not st.button(
        f"Route the text through all {len(keys)} MoE miniatures",
        icon=":material/play_arrow:",
        key="rt_zoo_all",
        help="Each model, trained and untrained, reads the text once; "
        "the routing is kept on disk for every later visit.",
    ):
        st.caption(
            f"{missing} of the {2 * len(keys)} trained and untrained models still have to read the text "
            "(a few seconds each on a CPU, once); then this section shows by itself."
        )
        return
    _ensure(keys)
    every = _spec_table(tuple(keys), version)
    summary = sp.specialisation_summary(every)
    _ui.chart(
        spc.specialisation_overview(summary, "Specialisation of every trained MoE miniature vs untrained"),
        "specialisation zoo",
        "Mean over each model's MoE layers of the measure above, on the same text.",
    )
    _ui.frame(
        summary,
        "specialisation zoo",
        csv=every.drop(columns=["key"]),
        hide_index=True,
        width="stretch",
        column_config={c: DEC3 for c in summary.columns if c != "model"},
        caption="The CSV has every layer with MI, chance and entropy in bits.",
    )
    bal = _balance(version)
    _ui.chart(
        spc.balance_by_router(bal, "Expert load on the same text, by how the routers were balanced"),
        "balance by router",
        "One point per model and MoE layer: load = selections of each expert (every top-k slot) over the "
        "text. Auxiliary loss: the Switch-Transformer balancing loss added in training (coefficient from "
        "the config). Aux-loss-free (bias-corrected): DeepSeek's per-expert bias, used only for the choice "
        "and nudged after each step towards balance (read from the ArchSpec, not the model's name). CV and "
        "max/mean are 0 and 1 when balanced; normalized entropy is 1.",
    )
    _ui.frame(
        sp.balance_summary(bal).rename(columns=BALANCE_NAMES),
        "balance by router",
        csv=bal.drop(columns=["key"]),
        hide_index=True,
        width="stretch",
        column_config={c: DEC3 for c in BALANCE_NAMES.values()},
        caption="Means over models and MoE layers; the CSV has every model and layer.",
    )


st.title("Routing")
st.caption(
    "Mixture-of-experts models send each token to a few experts per layer. **The last Playground run** "
    "shows those choices for its MoE models, live while it generates (random-weight miniatures show the "
    "router mechanics: top-k, shared experts, balance). **What the trained routers learned** runs the "
    "zoo's trained miniatures over held-out corpus text: which tokens each expert takes, how much the "
    "token decides the expert compared with the same model untrained, and how balanced the load is by "
    "balancing scheme."
)
view = setting(
    "rtview",
    "run",
    st.radio,
    choice(VIEWS),
    label="Show",
    options=list(VIEWS),
    format_func=VIEWS.get,
    horizontal=True,
    label_visibility="collapsed",
)
if view == "learned":
    with _ui.guard("the trained routers"):
        _learned()
else:
    with _ui.guard("the routing charts"):
        live = _live.current()
        if live is None:
            _no_run()
        else:
            _page(live)
