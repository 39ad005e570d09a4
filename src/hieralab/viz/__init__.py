"""Pictures: training curves, confusion matrices, probe and study plots (``figures``), and MAE reconstructions
(``reconstructions``). Every picture is written atomically, with a title, labelled axes and a legend."""
