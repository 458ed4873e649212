"""Synthetic chest-CT phantoms with one mediastinal mass, for training, tests, demos and benchmarks.

The project cannot download scans, so it makes its own. Every case is built in *anatomy
coordinates* (millimetres of a nominal adult, patient-aligned: +u = patient left, +v = posterior,
+w = superior, i.e. the LPS axes, origin near the carina) and rasterised straight onto the case's
own voxel grid: each structure is an implicit shape (rounded-box body layers, tubes, ellipsoids,
bands) evaluated with vectorised float32 numpy over the index box that can contain it, slab by
slab, into a ``uint8`` tissue map (`Tissue`). What depends on the in-plane position only (body
layers, diaphragm and apex heights) is tabulated once in 2D and looked up. The tissue map is then
turned into Hounsfield units (per-case values, mass texture, denser dependent lung), CT noise is
added and each slice is slightly smoothed in-plane (which also correlates the noise).

What a case contains: air; a rounded-box body (skin, subcutaneous fat, chest-wall muscle); ribs,
sternum, scapulae, vertebral bodies with discs, posterior arches and canal; two lungs (about
-850 HU, denser posteriorly) with branching vessel trees; diaphragm domes with liver and
spleen/stomach (sometimes with gas) below; mediastinal fat; heart (myocardium, blood pool,
septum); aorta (ascending, arch, descending), arch branches, pulmonary trunk and arteries,
pulmonary veins, SVC, IVC, brachiocephalic vein; trachea and main bronchi; oesophagus; sometimes a
CT table; and one lobulated, textured mass of 20-60 HU (sometimes with a low-density core) in the
prevascular, paratracheal, subcarinal, hilar, pericardial or paravertebral space, which in most
cases abuts the heart or a great vessel (so intensity alone cannot separate it). About a third
of the full-size cases (60% of the small ones) are contrast-enhanced (blood 150-250 HU).

Geometry per case: random spacing, origin and body size; some cases are stored with permuted
or flipped array axes (`LAYOUTS`: the world-space anatomy is unchanged, only the array layout,
the direction columns and the origin differ), a few on a slightly oblique grid.

Determinism: case ``index`` of seed ``seed`` draws from ``SeedSequence([seed, index])`` only, so
it is the same whatever the cohort size.

Modules, in the order a case is made: `sizes` (small / full), `grid` (in-plane grid, z window,
world placement), `anatomy` (the structures' parameters), `mass` (its shape and place),
`hounsfield` (HU per tissue, noise, the image), `raster` (canvas and implicit shapes), `trunk`
and `mediastinum` (painting), `layouts` (stored array layouts), `case` (one case), `cohort`
(a Decathlon dataset); `tissues` holds the tissue codes.
"""

from ceds_deploy.synthetic.case import PhantomCase, generate_case, make_case
from ceds_deploy.synthetic.cohort import TEST_INDEX_START, cohort_indices, make_cohort
from ceds_deploy.synthetic.layouts import LAYOUTS, reorient
from ceds_deploy.synthetic.sizes import SIZES, PhantomSize
from ceds_deploy.synthetic.tissues import Tissue

__all__ = [
    "PhantomSize",
    "SIZES",
    "Tissue",
    "PhantomCase",
    "LAYOUTS",
    "generate_case",
    "make_case",
    "make_cohort",
    "cohort_indices",
    "reorient",
    "TEST_INDEX_START",
]
