"""Training from search trees: PPM and value heads (`reward`), policy SFT (`sft`) and
Step-DPO (`dpo`), all with TRL + peft on a base loaded by `rstar.train.base`."""
