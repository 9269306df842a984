"""The papers' methods, applied to any model: HiDiffusion (hires), CoOp/CasPL (prompts), distillation losses."""
