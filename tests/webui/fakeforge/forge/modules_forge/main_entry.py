"""Forge sets the checkpoint loading parameters from the UI's selection (modules_forge/main_entry.py)."""

refreshed = []


def refresh_model_loading_parameters():
    from modules import sd_models, shared

    info = sd_models.checkpoints_list.get(shared.opts.sd_model_checkpoint)
    sd_models.model_data.forge_loading_parameters = {"checkpoint_info": info}
    refreshed.append(info)
