"""`lmjax bench {train,data,generate}`: speed measured, printed as figures."""


def bench_train(cfg, args):
  from lmjax.bench.train import bench_train as run
  run(cfg, args)


def bench_data(cfg, args):
  from lmjax.bench.data import bench_data as run
  run(cfg, args)


def bench_generate(cfg, args):
  from lmjax.bench.generate import bench_generate as run
  run(cfg, args)
