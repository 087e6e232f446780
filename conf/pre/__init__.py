# Makes this folder part of the robustfl.conf package, so Hydra finds it when installed.
