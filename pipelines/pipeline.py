"""The emoalign DAG: wiring only. Step logic lives in `components/`, adapters in `steps.py`."""

from kfp import dsl

from pipelines import steps

PIPELINE_NAME = "emoalign"


@dsl.pipeline(name=PIPELINE_NAME,
              description="IEMOCAP speech + text emotion recognition (Xu et al. 2019)")
def emoalign_pipeline(corpus: str, config_yaml: str, data_hash: str, git_sha: str = ""):
    ingest = steps.ingest(corpus=corpus, config_yaml=config_yaml, data_hash=data_hash)
    ingest.set_display_name("ingest")
    validate = steps.validate(manifest=ingest.outputs["manifest"], config_yaml=config_yaml)
    validate.set_display_name("validate")
    features = steps.features(validated=validate.outputs["validated"], config_yaml=config_yaml,
                              data_hash=data_hash)
    features.set_display_name("features")
    train = steps.train(store=features.outputs["store"], validated=validate.outputs["validated"],
                        config_yaml=config_yaml)
    train.set_display_name("train")
    evaluate = steps.evaluate(model=train.outputs["model"], store=features.outputs["store"],
                              validated=validate.outputs["validated"], config_yaml=config_yaml)
    evaluate.set_display_name("evaluate")
    track = steps.track(manifest=ingest.outputs["manifest"],
                        validated=validate.outputs["validated"], model=train.outputs["model"],
                        evaluation=evaluate.outputs["evaluation"], config_yaml=config_yaml,
                        corpus=corpus, data_hash=data_hash, git_sha=git_sha,
                        pipeline_run=dsl.PIPELINE_JOB_NAME_PLACEHOLDER)
    track.set_display_name("track")
    with dsl.If(evaluate.outputs["Output"] == "passed", name="ua-at-or-above-floor"):
        register = steps.register(manifest=ingest.outputs["manifest"],
                                  validated=validate.outputs["validated"],
                                  model=train.outputs["model"],
                                  evaluation=evaluate.outputs["evaluation"],
                                  config_yaml=config_yaml, run_id=track.outputs["Output"])
        register.set_display_name("register")
