"""A member's model that means harm (issue 67), as MLflow's models-from-code: run as a training's entry point it
saves itself (with tests/inside_attacker.py beside it) into EM_MODEL_DIR; loaded by a replica, each prediction
makes every attempt of tests/inside_attacker.py from inside the replica, its targets given as the `targets`
column of the request (JSON; `replicas`: each of its endpoint's replica keys and ports), and answers what it
found, as one JSON string. With `forge`, it also writes a record into its endpoint's inference log that
claims another project's and another endpoint's."""

import json
import os

import mlflow.pyfunc


class Attack(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        import inside_attacker

        given = json.loads(model_input["targets"].iloc[0])
        mine = os.getcwd()  # its own folder, named after its replica's key: the neighbour is the other one
        given["replica"] = next((port for key, port in given.get("replicas", {}).items()
                                 if key != os.path.basename(mine)), None)  # none in a batch
        found = inside_attacker.attempts({**given, "mine": mine}, replica=True)
        if given.get("forge"):  # a record of its endpoint's inference log, passed off as another project's
            with open(given["forge"]["log"], "a") as fh:
                fh.write(json.dumps({"category": "mlyard.inference", "logLevel": "ERROR", "body": given["forge"]["body"],
                                     "time": "2026-01-01T00:00:00Z", "easymakerAppKey": given["forge"]["project"],
                                     "endpointId": "1"}) + "\n")
        return [json.dumps(found)]


if __name__ == "__main__":
    here = os.path.dirname(os.path.abspath(__file__))
    mlflow.pyfunc.save_model(os.environ["EM_MODEL_DIR"], python_model=os.path.join(here, "inside_model.py"),
                             code_paths=[os.path.join(here, "inside_attacker.py")], pip_requirements=[])
else:
    mlflow.models.set_model(Attack())
