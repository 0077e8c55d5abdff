from setuptools import find_packages, setup

with open('README.md', encoding='utf-8') as f:
    long_description = f.read()

setup(
    name='pyg-cerp',
    version='0.1.0',
    description=('CERP: compact compositional embeddings via regularized '
                 'pruning, as a PyTorch Geometric extension'),
    long_description=long_description,
    long_description_content_type='text/markdown',
    packages=find_packages(include=['pyg_cerp', 'pyg_cerp.*']),
    python_requires='>=3.9',
    install_requires=[
        'torch>=2.1',
        'torch-geometric>=2.5',
        'numpy>=1.23',
        'tqdm>=4.60',
    ],
    extras_require={
        'test': ['pytest>=7', 'pytest-timeout>=2'],
        'benchmark': ['matplotlib>=3.5'],
        'sparse': ['torch-scatter>=2.1', 'torch-sparse>=0.6.17'],
    },
    classifiers=[
        'Programming Language :: Python :: 3',
        'Topic :: Scientific/Engineering :: Artificial Intelligence',
    ],
)
