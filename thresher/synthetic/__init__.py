"""The synthetic web: a generated pool with planted faults and its ground truth (`synth`), served over
HTTP on 127.0.0.1 (`serve`)."""
