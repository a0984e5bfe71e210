"""Training feed-forward styles (Johnson networks, new CIN styles) and part segmenters on Ray Train.

:mod:`~nstray.train.style_training` is the pure tensor part (perceptual loss, trainable networks,
one step); :mod:`~nstray.train.data` lists and reads content images; :mod:`~nstray.train.curves`
writes loss curves as CSV/JSON (the plot is :mod:`nstray.plots`); :mod:`~nstray.train.ray_trainer`
runs it all on Ray Train (``TorchTrainer``). :mod:`~nstray.train.seg_data` and
:mod:`~nstray.train.seg_trainer` do the same for segmenters (``nstray train-seg``); the Ray Train set-up
both use (workers, checkpoints, resume, curves) is :mod:`~nstray.train.ray_run`.
Heavy imports stay inside the submodules.
"""
