import os
import tempfile

data_path = os.environ.get("FAKE_WEBUI_DATA", tempfile.mkdtemp(prefix="fake_webui_"))
models_path = os.path.join(data_path, "models")
script_path = data_path
