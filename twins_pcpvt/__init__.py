"""Twins-PCPVT-Small deployment toolkit: preprocessing, ONNX export, inference on many runtimes, accuracy.

Which module owns which concern:

system.py           the memory a run may take; whether a batch's input copies fit in it
infer/inputs.py     the files `--input` names: collected in ais_bench's order, checked, read into batches
infer/outputs.py    output names, the output folder (lock, marks, an earlier run's removal), writing outputs
infer/record.py     what a run measured: ais_bench's summary JSON and the console report
infer/devices.py    `--device` lists (the one parser) and how several devices share the inputs
infer/flags.py      the NPU-only flags, flag combinations, runner options, the batch size a model allows
infer/local.py      `--engine local`: folder and pure modes, reader/writer threads, device workers, command
infer/ray_engine.py `--engine ray`: the job over Ray Data, its progress, summary and the command
infer/ray_stages.py the job's read, model and write stages (run in Ray's workers)
infer/ray_plan.py   the job's inputs and outputs, its identity, its record for a rerun, its path checks
infer/ray_cluster.py Ray's start-up, what the actors ask of the cluster, the watch over lost nodes
data/               manifest, class map, reference transform, untrusted image decoding, tensor files,
                    discovery, the preprocess stage and its worker processes (its map: data/__init__.py)
results.py          finding and reading inference result folders, the output decoders, the replica check,
                    split runs
labels.py           label files and manifests read as labels
"""

__version__ = "0.1.0"
