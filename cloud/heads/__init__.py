"""The head benchmark (``wafer-cloud bench-heads``): a classical MLP head and a 4-qubit
variational quantum head trained on the same frozen features of the default classifier, under
identical splits and hyper-parameters (`../shared/brief/benchmark-report-readme.md`)."""
