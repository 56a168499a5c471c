"""The hostile-input corpus (issue 17): broken or hostile files generated at test time,
each run through the real command line under a memory cap and a timeout."""
