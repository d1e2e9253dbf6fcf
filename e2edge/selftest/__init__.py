"""`e2edge selftest`, the acceptance test for a new box: command.py parses and prints,
suite.py runs packages.py's packages on backends.py's backends through llm_check.py and
vision_check.py, kernels.py runs the GPU kernel cases, report.py writes it all up."""
