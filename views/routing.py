"""Routing: which experts each token goes to, layer by layer, live while the Playground generates."""
from __future__ import annotations

import streamlit as st

from backend.live import routing
from backend.present import charts, playground
from backend.present.playground import LiveRun, SlotRouting
from backend.present.text import md
from views import _live, _state, _ui
from views._state import setting

LAST = (32, 64, 128, 256, 0)

NO_ROUTER = ("**{label}** is a dense model: it has no router. Every token runs the same feed-forward "
             "block in every layer, so there is no expert choice to show.")


def _no_run() -> None:
    models = _state.selected()
    if not _ui.need_models(models):
        return
    for m in models:
        if playground.is_dense(m.source):
            st.info(NO_ROUTER.format(label=md(m.label)), icon=":material/block:")
    if any(not playground.is_dense(m.source) for m in models):
        st.info("Routing is recorded while a mixture-of-experts model generates. Run a prompt in the "
                "Playground; this page then follows it token by token.", icon=":material/info:")
        st.page_link("views/playground.py", label="Open the Playground", icon=":material/chat:")


def _pick(options: list, key: str, **kwargs):
    """A widget whose remembered value is dropped when it is no longer an option."""
    if st.session_state.get(key) not in options:
        st.session_state.pop(key, None)
    return st.radio(options=options, key=key, horizontal=True, **kwargs) if len(options) < 5 else \
        st.selectbox(options=options, key=key, **kwargs)


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
    st.caption(f"{E} routed experts, top-{t.top_k} per token, MoE layers {', '.join(map(str, t.moe_layers))}; "
               f"{len(r.tokens)} tokens routed ({r.prompt_tokens} of the prompt).")
    _show(charts.routing_heatmap(w.experts, w.tokens, t.moe_layers, E, r.prompt_tokens,
                                 f"{r.label}: top-1 expert of each token in each MoE layer", first=w.first),
          f"routing heatmap {r.label}",
          "Each cell is one token in one layer, coloured by the expert with the largest routing weight; hover "
          "for all chosen experts and their weights. The dotted line separates the prompt from generated tokens "
          "(the last generated token is not routed: it is never fed back).", tick)
    left, right = st.columns(2)
    load = routing.expert_load(t)[t.moe_layers.index(layer)]
    with left:
        _show(charts.expert_load_bar(load, layer, E, f"Expert load, layer {layer}"), f"expert load {r.label}",
              "Times each expert was picked (each token picks top-k). The dashed line is a perfectly "
              "balanced load.", tick)
    with right:
        _show(charts.coselection_heatmap(routing.coselection(t, layer), layer, f"Experts chosen together, layer {layer}"),
              f"coselection {r.label}", "Tokens that picked both experts; the diagonal counts each expert's picks.",
              tick)
    _show(charts.token_expert_grid(w.experts, w.tokens, layer, E, r.prompt_tokens,
                                   f"The text coloured by its top-1 expert in layer {layer}", first=w.first),
          f"tokens by expert {r.label}", "Prompt and generated text, token by token (␣ is a space, ⏎ a newline); "
          "same colours as the heatmap.", tick)
    _show(charts.balance_lines(routing.balance_over_time(t), "Load balance of the tokens so far"),
          f"balance over time {r.label}",
          "After each step, over all tokens routed so far, per MoE layer: coefficient of variation and max/mean "
          "(0 and 1 when balanced) and normalized entropy (1 when every expert is picked equally). Step 0 is "
          "the whole prompt.", tick)


def _shared(live: LiveRun) -> None:
    df = playground.shared_table(live)
    if df.empty:
        return
    st.subheader("Shared vs routed experts")
    colors = {live.run.stats(i)["model"]: s.color for i, s in enumerate(live.slots)}
    _ui.chart(charts.shared_routed_bar(df, colors, "Per-token expert compute: shared vs routed"),
              "shared vs routed", "Shared experts run for every token; routed experts only for the top-k a "
              "router picks. Share of the expert FFN width one token runs (the miniature keeps the full "
              "model's ratio). 0 % shared: the model has no shared expert.")
    _ui.frame(df, "shared vs routed", hide_index=True, width="stretch")


def _page(live: LiveRun) -> None:
    _live.show_link(live, "routing")
    if _live.current_id():
        st.page_link("views/playground.py", label="This run in the Playground", icon=":material/chat:",
                     query_params={_live.PARAM: _live.current_id()})
    for i, s in enumerate(live.slots):
        if not s.moe:
            st.info(NO_ROUTER.format(label=md(live.run.stats(i)["model"])), icon=":material/block:")
    moe = [i for i, s in enumerate(live.slots) if s.moe]
    if not moe:
        st.caption("The last Playground run had no mixture-of-experts model. Select one (e.g. DeepSeek V3, "
                   "Qwen3 30B-A3B) and run it.")
        return
    slot = _pick(moe, "rt_slot", label="Model", format_func=lambda i: live.run.stats(i)["model"])
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
        layer = _pick(layers, "rt_layer", label="Layer for the load, co-selection and text charts",
                      format_func=lambda n: f"layer {n}")
    with right:
        last = setting("rtlast", 64, st.selectbox, _state.int_in(0, 256), label="Tokens in the heatmap and text",
                       options=LAST, format_func=lambda n: f"last {n}" if n else "all",
                       help="The heatmap and the coloured text show the most recent tokens; load, balance and "
                       "co-selection always count every token.")
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
    _ui.frame(df, f"routing table {r.label}", hide_index=True, width="stretch", height=260,
              caption="Every routing decision: position, token, MoE layer, rank among the top-k, expert, weight.")


st.title("Routing")
st.caption("Mixture-of-experts models send each token to a few experts per layer. This page shows those choices "
           "for the MoE models of the last Playground run, live while it generates. Miniatures have random "
           "weights, so the routing shows how the router mechanics behave (top-k, shared experts, balance), "
           "not what a trained model learned.")
with _ui.guard("the routing charts"):
    live = _live.current()
    if live is None:
        _no_run()
    else:
        _page(live)
