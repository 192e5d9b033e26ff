"""Callback registry: on_* registers, *_callback runs them (each wrapped: the webui reports and goes on)."""

from collections import defaultdict

from modules import errors

callbacks = defaultdict(list)


def _add(kind, fn):
    callbacks[kind].append(fn)


def _run(kind, *args):
    for fn in list(callbacks[kind]):
        try:
            fn(*args)
        except Exception:
            errors.report(f"Error executing callback {kind}", exc_info=True)


def clear_callbacks():
    callbacks.clear()


def on_app_started(callback, *, name=None):
    _add("app_started", callback)


def on_model_loaded(callback, *, name=None):
    _add("model_loaded", callback)


def on_ui_settings(callback, *, name=None):
    _add("ui_settings", callback)


def on_script_unloaded(callback, *, name=None):
    _add("script_unloaded", callback)


def on_infotext_pasted(callback, *, name=None):
    _add("infotext_pasted", callback)


def on_before_ui(callback, *, name=None):
    _add("before_ui", callback)


def before_ui_callback():
    _run("before_ui")


def infotext_pasted_callback(infotext, params):
    _run("infotext_pasted", infotext, params)


def app_started_callback(demo, app):
    _run("app_started", demo, app)


def model_loaded_callback(sd_model):
    _run("model_loaded", sd_model)


def ui_settings_callback():
    _run("ui_settings")
