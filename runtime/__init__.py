"""The field runtime of `bmamba detect` and `bmamba embed`: numpy, soundfile, soxr, onnxruntime.

Never imports torch: the PyTorch backend (for ``--parity``) and TensorRT load only when asked for.

    from biomamba.runtime.backends import open_backend
    from biomamba.streaming import StreamRunner
    backend = open_backend("exported/run1")                 # onnxruntime on the CPU by default
    runner = StreamRunner(backend.run_chunk, backend.initial_state(1))
    out = runner.push(audio_16k)                            # {"logits": [n, C], "embeddings": [n, D]}

Modules: ``detect`` (the per-recording pipeline and the run), ``embed``, ``backends`` (choosing one),
``backend_onnx``, ``backend_trt``, ``manifest`` (model.json), ``models`` (the shipped model),
``events``, ``pooling``, ``writers``, ``journal``, ``durations``, ``ssd_numpy`` and ``cuda_scan``
(the scan on the CPU in numpy, and our CUDA kernels through ctypes).
"""
