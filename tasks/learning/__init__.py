"""The model and what feeds it: AlexNet in Keras 3 (its custom layers registered on
import, so `keras.models.load_model` reads a saved `.h5` after `import tasks.learning.model`),
the tf.data input pipeline, and prediction on new images.

May use: `tasks.storage` and the contract. Not the other wings.
"""
