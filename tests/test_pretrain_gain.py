"""experiments/pretrain_gain.py's table from finished sweeps: medians over seeds, best vs best."""

from __future__ import annotations

import csv
import json
import os


def _finished_sweep(workdir, rows):
  os.makedirs(workdir)
  with open(os.path.join(workdir, "results.csv"), "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["trial", "optim.lr", "train.seed", "accuracy"])
    w.writerows(rows)


def test_table_takes_the_median_over_seeds_and_compares_best_medians(tmp_path, monkeypatch,
                                                                     capsys):
  from experiments import pretrain_gain as gain
  init = tmp_path / "init"
  (init / "tokenizer").mkdir(parents=True)
  (init / "config.json").write_text(json.dumps({"model": {"preset": "mini"}}))
  root = tmp_path / "ft"
  # lr 3e-4: pre-trained seeds 0.70 0.80 0.74 (median 0.74), random 0.75 0.60 0.76 (0.75);
  # lr 1e-3: pre-trained 0.77 0.50 0.78 (0.77, beaten by its max only), random 0.72 x3.
  _finished_sweep(root / "sst2_2k_pretrained", [
      ("a", 3e-4, 0, 0.70), ("b", 3e-4, 1, 0.80), ("c", 3e-4, 2, 0.74),
      ("d", 1e-3, 0, 0.77), ("e", 1e-3, 1, 0.50), ("f", 1e-3, 2, 0.78)])
  _finished_sweep(root / "sst2_2k_random", [
      ("a", 3e-4, 0, 0.75), ("b", 3e-4, 1, 0.60), ("c", 3e-4, 2, 0.76),
      ("d", 1e-3, 0, 0.72), ("e", 1e-3, 1, 0.72), ("f", 1e-3, 2, 0.72)])
  monkeypatch.setattr("sys.argv", ["pretrain_gain.py", "--init", str(init), "--root", str(root),
                                   "--recipes", "sst2_2k", "--seeds", "0,1,2"])
  assert gain.main() == 0
  table = capsys.readouterr().out
  assert "| 0.0003 | 74.00 (70.00-80.00) | 75.00 (60.00-76.00) |" in table
  assert "| 0.001 | 77.00 (50.00-78.00) | 72.00 (72.00-72.00) |" in table
  assert "| | best | 77.00 | 75.00 | **+2.00** |" in table
  assert (root / "gain.md").read_text().strip() == table.strip()


def test_commands_carry_learning_rates_seeds_and_recipe_flags():
  from experiments import pretrain_gain as gain
  cmd = gain.command("sst2_16k_frozen", "W", ["--config.init=I"], [1e-4, 3e-4], [0, 1])
  assert "--config.optim.freeze=encoder" in cmd
  assert cmd[-2:] == ["--config.sweep.space.optim.lr=[0.0001,0.0003]",
                      "--config.sweep.space.train.seed=[0,1]"]
  assert "--config.sweep.space.optim.lr=[0.0003,0.001]" in gain.command("sst2_2k", "W", [])
  assert "--config.train.epochs=3" in gain.command("sst2_2k", "W", [])
  assert "--config.train.epochs=10" in gain.command("sst2_2k", "W", [], epochs=10.0)
  assert "--config.head.pooling=mean" in gain.command("sst2_2k", "W", [],
                                                      settings=("head.pooling=mean",))
