"""The yujing load generator: realistic open-loop traffic against a RiskScorer service.

    yujing loadtest --target 127.0.0.1:50051 --mode unary --rate 500 --duration 30

traffic.py makes the conversations, runner.py sends them on a fixed arrival schedule
(latency from the intended send time: no coordinated omission), report.py turns the
merged HDR histograms into a JSON report and a PNG plot, cli.py wires the subcommand.
"""
