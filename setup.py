"""Package map and the compiled LDPC decoder; all metadata lives in pyproject.toml.

The instrument drivers live in ``drivers/`` but install as ``qkdd.drivers``:
pyproject.toml cannot express a find-packages over two roots. The decoder's
hot loop is C (see qkdd/postprocessing/reconciliation/_layered.c for why);
building it needs a C compiler and the Python headers.
"""

from setuptools import Extension, find_packages, setup

packages = find_packages(include=["qkdd", "qkdd.*"])
packages += ["qkdd.drivers"] + [f"qkdd.drivers.{p}" for p in find_packages("drivers")]

# Reassociation lets GCC vectorise the check-node sums; no -ffast-math, whose
# start-up code would set flush-to-zero for the whole process.
FLOAT_FLAGS = [
    "-fno-math-errno",
    "-fno-trapping-math",
    "-fno-signed-zeros",
    "-fassociative-math",
    "-ffinite-math-only",
]

layered = Extension(
    "qkdd.postprocessing.reconciliation._layered",
    sources=["qkdd/postprocessing/reconciliation/_layered.c"],
    extra_compile_args=["-O3", "-std=c11", *FLOAT_FLAGS],
)

setup(packages=packages, package_dir={"qkdd.drivers": "drivers"}, ext_modules=[layered])
