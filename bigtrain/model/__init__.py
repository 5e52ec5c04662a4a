"""The bigtrain model: per-layer-sized LLaMA, registered with transformers' Auto classes."""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from bigtrain.model.configuration import BigTrainConfig, architecture_problems
from bigtrain.model.modeling import BigTrainForCausalLM, BigTrainModel

AutoConfig.register(BigTrainConfig.model_type, BigTrainConfig, exist_ok=True)
AutoModel.register(BigTrainConfig, BigTrainModel, exist_ok=True)
AutoModelForCausalLM.register(BigTrainConfig, BigTrainForCausalLM, exist_ok=True)

__all__ = ["BigTrainConfig", "BigTrainForCausalLM", "BigTrainModel", "architecture_problems"]
