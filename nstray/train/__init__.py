"""Training feed-forward styles (Johnson networks, new CIN styles) on Ray Train.

:mod:`~nstray.train.style_training` is the pure tensor part (perceptual loss, trainable networks,
one step); :mod:`~nstray.train.data` lists and reads content images; :mod:`~nstray.train.curves`
writes loss curves as CSV/JSON (the plot is :mod:`nstray.plots`); :mod:`~nstray.train.ray_trainer`
runs it all on Ray Train (``TorchTrainer``).
Heavy imports stay inside the submodules.
"""
