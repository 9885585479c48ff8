"""Reference numbers shipped with the package (human.csv: the "Human" rows) and the script that
made them."""
