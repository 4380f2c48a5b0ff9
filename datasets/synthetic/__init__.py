"""Synthetic multi-domain facial-expression data ("synthetic domains").

Real FER datasets (RAF-DB, FERPlus, AffectNet, Oulu-CASIA) cannot be shipped, so
the demo and the tests use generated domains instead.  Every domain holds all
seven basic expressions drawn as schematic faces and is written to disk as
ordinary PNG files in the project's generic folder layout::

    <root>/<domain>/{train,test}/<class>/<domain>_<class>_<i:04d>.png
    <root>/<domain>/synthetic.json          # generation parameters (marker)

so that it goes through exactly the same reading code as real data.

The four domains imitate the way the real datasets differ from one another:

``synth_color``  colour "in the wild" photos (like RAF-DB): varied skin tones,
                 coloured cluttered backgrounds, moderate pose, mild noise.
``synth_gray``   low-resolution greyscale (like FERPlus / FER2013): rendered,
                 converted to grey, down-sampled to 24-32 px and back up,
                 low contrast, some noise.
``synth_lab``    laboratory captures (like Oulu-CASIA): frontal, centred,
                 constant scale, plain dark background, strong directional
                 light, almost no noise, near-monochrome tint.
``synth_wild``   hard wild images (like AffectNet): strong pose / rotation /
                 scale / translation variation, partial crops, heavy noise and
                 colour jitter, random occluders.

Each face is drawn from an expression *prototype* (FACS-inspired displacement
of brows, lids, cheeks and mouth from the neutral face) scaled by a random
intensity, on top of random identity geometry, so that similar pairs
(fear/surprise, disgust/anger, sadness/neutral) are genuinely confusable at low
intensity.

Modules: :mod:`~datasets.synthetic.styles` (the domains' looks), :mod:`~datasets.synthetic.faces`
(expressions and identities), :mod:`~datasets.synthetic.render` (drawing a face),
:mod:`~datasets.synthetic.storage` (domains on disk), :mod:`~datasets.synthetic.cli` (the command line
and a preview grid). Command line::

    python scripts/make_synthetic.py --root data --preview preview.png
"""
from datasets.synthetic.cli import main, make_preview
from datasets.synthetic.faces import Expression, Identity, expression_for, random_identity
from datasets.synthetic.render import render_face
from datasets.synthetic.storage import GENERATOR_VERSION, MARKER_FILE, ensure_domains, generate_domain, is_generated
from datasets.synthetic.styles import DOMAIN_STYLES, DOMAINS, DomainStyle

__all__ = ["DOMAIN_STYLES", "DOMAINS", "GENERATOR_VERSION", "MARKER_FILE", "DomainStyle", "Expression", "Identity",
           "ensure_domains", "expression_for", "generate_domain", "is_generated", "main", "make_preview",
           "random_identity", "render_face"]
