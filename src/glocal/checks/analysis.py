"""Checks of capture, report and steering arguments (glocal.analysis).

Every message states the rule, the values that broke it and the fix (see glocal.checks)."""

from __future__ import annotations


def capture_args(streaming, window, block) -> None:
    """``capture(streaming=True)`` needs the locality window up front; windows and blocks are positive ints."""
    if streaming and window is None:
        raise ValueError(
            "capture(streaming=True) computes statistics while the model runs, so it needs the locality window "
            "now; got streaming=True, window=None. Pass window=w (tokens), e.g. capture(model, streaming=True, window=65)."
        )
    for name, value in (("window", window), ("block", block)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ValueError(f"{name} must be a positive int or None; got {name}={value!r}. Pass e.g. {name}=64.")


def report_window(window, capture_window, streaming: bool) -> int:
    """The window of ``report()``: any positive int for exact captures; a streamed capture only has its own."""
    if streaming:
        if window is not None and window != capture_window:
            raise ValueError(
                f"a streaming capture computed its statistics for one window; got report(window={window}) but the "
                f"capture used window={capture_window}. Call report() or report(window={capture_window}), or capture "
                f"again with window={window}."
            )
        return capture_window
    window = window if window is not None else capture_window
    if window is None:
        raise ValueError("report() needs a locality window; got window=None. Pass report(window=w), e.g. window=65.")
    if not isinstance(window, int) or isinstance(window, bool) or window < 1:
        raise ValueError(f"window must be a positive int; got window={window!r}. Pass e.g. window=65.")
    return window


def report_clip(clip, capture_clip) -> None:
    if clip != capture_clip:
        raise ValueError(
            f"a streaming capture computed the windowed average attention distance for one clip; got "
            f"waad_clip={clip} but the capture used {capture_clip}. Pass waad_clip to capture() instead."
        )


def steering_converted_layer(steered: bool, layer: int, heads: list) -> None:
    """A steering handler and a conversion must not meet in one layer: conversion would drop the steering."""
    if steered:
        raise ValueError(
            f"layer {layer} has converted heads {heads} and a steering handler: the conversion replaces the "
            f"attention that steering rewrites, so the steering would be silently lost. Steer the model before "
            f"converting it, or call glocal.convert.restore(model) first."
        )


def steering_factor(name: str, value, low: float = 0.0, high: float | None = None) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value >= low
    ok = ok and (high is None or value <= high)
    if not ok:
        rng = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be a number {rng}; got {name}={value!r}. Pass a value {rng}.")
