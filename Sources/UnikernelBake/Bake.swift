// UnikernelBake: under construction.
