"""load_upscalers: instantiate every Upscaler subclass with its --<name>-models-path flag."""

from modules import shared
from modules.upscaler import Upscaler


def load_upscalers():
    data = []
    commandline_options = vars(shared.cmd_opts)
    used = {}
    for cls in reversed(Upscaler.__subclasses__()):
        used.setdefault(str(cls), cls)
    for cls in reversed(used.values()):
        cmd_name = f"{cls.__name__.lower().replace('upscaler', '')}_models_path"
        path = commandline_options.get(cmd_name, None)
        scaler = cls(path)
        scaler.user_path = path
        data += scaler.scalers
    shared.sd_upscalers = sorted(data, key=lambda x: x.name.lower())
    return shared.sd_upscalers
