"""Our models and tokenizers in other projects' layouts: Hugging Face ``transformers`` (``hf``,
``tokenizer_files``) and optimum-graphcore's GroupBERT (``optimum_groupbert``). Used by
``python -m groupbert.export`` and by ``train.init_checkpoint`` (``groupbert.training.initialize``).

A layer between the models and training (``tests/test_layers.py``): it may import ``groupbert.models``,
``config``, ``data``, ``squad`` and ``errors``, never ``training``, ``tasks`` or ``cli``.
"""
