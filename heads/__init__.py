"""Tiny task heads fitted on frozen encoder embeddings (issue 6).

features.py   FeatureRecipe: pooled or grid, layers, grid, width; checks features against it
models.py     LinearProbe, MlpHead, AttnPoolHead, DenseDecoder, built from HeadConfig
tasks.py      people_count, time_of_day, depth, segmentation: loss, metrics, baseline, decoding
fit.py        fit_from_arrays: time-ordered split, AdamW, early stopping, metrics beside the baseline
join.py       labels x frames x embedding-store features -> fit (the layer `fth heads fit` wraps)
labels.py     CSV, COCO, Label Studio readers/writers joined on our frame id
label_maps.py index-PNG masks + class list, 16-bit PNG / .npy depth maps
select.py     choosing frames to label (random, k-center, uncertainty, hybrid/TypiClust), Label Studio task export
active.py     ensembles of K heads of a task and the uncertainty they give each frame
artifact.py   save/load through the artifact registry (kind "head"), predict -> JSON
plots.py      predicted-vs-true and image/label/prediction PNGs (PIL)
synthetic.py  features with known structure for tests
"""
