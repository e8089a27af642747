"""Cloud analytics: drift statistics and the canary's A/B decision.

`stats` holds the pure statistics (PSI, KS, halting trend, Wilson intervals, macro-F1 and its
bootstrap, the two-proportion test); `ab_test` decides a canary and the post-promotion watch;
`drift` builds the drift report from uploaded aggregates and labels; `plots` draws its PNG.
Nothing here touches a database or the network: callers pass dataclasses in and store what
comes out.
"""
