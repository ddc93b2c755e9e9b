"""`lmjax bench {train,data,generate}`: speed measured and printed as figures; one module each, each with main(cfg, args)."""
