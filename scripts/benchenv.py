"""Shared by the benchmark scripts: runs scripts/setup.sh and returns the environment its
env.sh describes (LIBTORCH, ORT_DYLIB_PATH, EMSHAP_CI_CACHE, ...) laid over this one."""
import os, subprocess


def setup_env(root, *setup_args):
    env_file = subprocess.run([f"{root}/scripts/setup.sh", *setup_args], check=True, capture_output=True,
                              text=True).stdout.strip()
    env = dict(os.environ)
    for line in open(env_file):
        if line.startswith("export "):
            k, v = line[7:].strip().split("=", 1)
            env[k] = v.strip('"')
    return env
