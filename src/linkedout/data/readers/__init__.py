"""One module per on-disk layout; `linkedout.data.formats` recognises the layout and calls the reader.

==============  ===================================================================================
module          reads
==============  ===================================================================================
``atomic``      RecBole atomic ``X.inter`` (+ ``X.item``); also writes them
``movielens``   MovieLens-100K ``u.data`` (+ ``u.item``, ``u.genre``)
``microlens``   MicroLens ``<prefix>_pairs.csv`` / ``_pairs.tsv`` (+ ``<prefix>_title_en.csv``)
``tabular``     any CSV / TSV / Parquet with user / item / time columns (given or guessed)
``common``      what they share: `RawEvents`, column-role guessing, item metadata normalisation
==============  ===================================================================================
"""
